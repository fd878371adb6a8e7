package main

import (
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// upstream is the counting application behind the relays: it answers 200
// to everything and counts, per request path, every Idempotency-Key it gets.
type upstream struct {
	srv  *http.Server
	addr string

	mu    sync.Mutex
	keys  map[string]map[string]int // path -> Idempotency-Key -> deliveries
	total map[string]int            // path -> requests
}

// startUpstream listens on a free 127.0.0.1 port; keep-alive is on (Go's
// default).
func startUpstream() (*upstream, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &upstream{
		addr:  l.Addr().String(),
		keys:  make(map[string]map[string]int),
		total: make(map[string]int),
	}
	u.srv = &http.Server{Handler: u, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	go u.srv.Serve(l)
	return u, nil
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	key := r.Header.Get("Idempotency-Key")
	u.mu.Lock()
	u.total[r.URL.Path]++
	if key != "" {
		m := u.keys[r.URL.Path]
		if m == nil {
			m = make(map[string]int)
			u.keys[r.URL.Path] = m
		}
		m[key]++
	}
	u.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// distinct is how many different keys reached path.
func (u *upstream) distinct(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.keys[path])
}

// counts copies the key counts of path.
func (u *upstream) counts(path string) map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make(map[string]int, len(u.keys[path]))
	for k, n := range u.keys[path] {
		out[k] = n
	}
	return out
}

func (u *upstream) close() { _ = u.srv.Close() }
