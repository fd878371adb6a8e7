package caddytest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// hit is one request the upstream received.
type hit struct {
	Method   string
	Path     string
	RawQuery string
	Header   http.Header
	Body     []byte
	At       time.Time
	// Key is the Idempotency-Key header, Attempt the attempt-number header.
	Key     string
	Attempt int
	// Nth counts the requests with this Key so far, this one included.
	Nth int
	// Status is what the upstream answered (0 for a hang).
	Status int
}

func (h *hit) String() string {
	return fmt.Sprintf("%s %s?%s key=%q attempt=%d -> %d", h.Method, h.Path, h.RawQuery, h.Key, h.Attempt, h.Status)
}

// reply is what the upstream answers to one request.
type reply struct {
	status int
	header map[string]string
	// hang keeps the request open until the client gives up or the
	// upstream stops.
	hang bool
}

// responder picks the reply to a request; h.Nth tells which time this
// payload (by Idempotency-Key) is seen.
type responder func(h *hit) reply

// sequence answers the n-th request of each payload with the n-th status;
// the last status repeats.
func sequence(statuses ...int) responder {
	return func(h *hit) reply {
		return reply{status: statuses[min(h.Nth, len(statuses))-1]}
	}
}

// always answers every request with status.
func always(status int) responder { return sequence(status) }

// marked sends the payloads whose body contains mark to r, the others to
// otherwise.
func marked(mark string, r, otherwise responder) responder {
	return func(h *hit) reply {
		if bytes.Contains(h.Body, []byte(mark)) {
			return r(h)
		}
		return otherwise(h)
	}
}

// upstream is a real HTTP server on 127.0.0.1 standing in for the
// application behind the relay. It records every request.
type upstream struct {
	// URL is http://127.0.0.1:<port>, no path.
	URL  string
	Addr string

	respond responder
	srv     *http.Server
	stop    chan struct{}

	mu      sync.Mutex
	hits    []*hit
	perKey  map[string]int
	changed chan struct{} // closed and replaced on every hit
}

// newUpstream starts an upstream on a free port. It stops when the test
// ends.
func newUpstream(t *testing.T, respond responder) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveUpstream(t, ln, respond)
}

// freeAddr returns an address nothing listens on (for now).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startUpstreamOn starts an upstream on addr, e.g. one from freeAddr.
func startUpstreamOn(t *testing.T, addr string, respond responder) *upstream {
	t.Helper()
	var ln net.Listener
	var err error
	// the port was just free; give a lingering socket a moment to go
	for deadline := time.Now().Add(waitTimeout); ; {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listening again on %s: %v", addr, err)
	}
	return serveUpstream(t, ln, respond)
}

func serveUpstream(t *testing.T, ln net.Listener, respond responder) *upstream {
	u := &upstream{
		URL:     "http://" + ln.Addr().String(),
		Addr:    ln.Addr().String(),
		respond: respond,
		stop:    make(chan struct{}),
		perKey:  make(map[string]int),
		changed: make(chan struct{}),
	}
	u.srv = &http.Server{Handler: http.HandlerFunc(u.serve), ReadHeaderTimeout: waitTimeout}
	go func() {
		if err := u.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("upstream %s: %v", u.Addr, err)
		}
	}()
	t.Cleanup(u.close)
	return u
}

// close stops the upstream and releases hanging requests.
func (u *upstream) close() {
	select {
	case <-u.stop:
		return
	default:
	}
	close(u.stop)
	u.srv.Close()
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h := &hit{
		Method:   r.Method,
		Path:     r.URL.Path,
		RawQuery: r.URL.RawQuery,
		Header:   r.Header.Clone(),
		Body:     body,
		At:       time.Now(),
		Key:      r.Header.Get("Idempotency-Key"),
	}
	h.Attempt, _ = strconv.Atoi(r.Header.Get("X-Webhook-Relay-Attempt"))

	u.mu.Lock()
	u.perKey[h.Key]++
	h.Nth = u.perKey[h.Key]
	rep := u.respond(h)
	h.Status = rep.status
	u.hits = append(u.hits, h)
	close(u.changed)
	u.changed = make(chan struct{})
	u.mu.Unlock()

	if rep.hang {
		select {
		case <-r.Context().Done():
		case <-u.stop:
		}
		return
	}
	for name, value := range rep.header {
		w.Header().Set(name, value)
	}
	w.WriteHeader(rep.status)
}

// all returns what the upstream received so far.
func (u *upstream) all() []*hit {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.hits)
}

// waitFor waits until ok holds for what the upstream received, and returns
// that. It fails the test after waitTimeout.
func (u *upstream) waitFor(t *testing.T, what string, ok func(hits []*hit) bool) []*hit {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		u.mu.Lock()
		hits, changed := slices.Clone(u.hits), u.changed
		u.mu.Unlock()
		if ok(hits) {
			return hits
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("upstream: timed out after %s waiting for %s; it received %d requests:\n%s",
				waitTimeout, what, len(hits), describe(hits))
		}
	}
}

// waitDelivered waits until the upstream answered 2xx to a request whose
// body is body, and returns every request carrying that body.
func (u *upstream) waitDelivered(t *testing.T, body []byte) []*hit {
	t.Helper()
	hits := u.waitFor(t, fmt.Sprintf("a 2xx answer to %.80s", body), func(hits []*hit) bool {
		return slices.ContainsFunc(withBody(hits, body), delivered)
	})
	return withBody(hits, body)
}

func delivered(h *hit) bool { return h.Status >= 200 && h.Status < 300 }

// withBody keeps the requests whose body is byte-identical to body.
func withBody(hits []*hit, body []byte) []*hit {
	var out []*hit
	for _, h := range hits {
		if bytes.Equal(h.Body, body) {
			out = append(out, h)
		}
	}
	return out
}

// withKey keeps the requests with the Idempotency-Key key.
func withKey(hits []*hit, key string) []*hit {
	var out []*hit
	for _, h := range hits {
		if h.Key == key {
			out = append(out, h)
		}
	}
	return out
}

func describe(hits []*hit) string {
	var b strings.Builder
	for i, h := range hits {
		if i == 50 {
			fmt.Fprintf(&b, "  ... %d more\n", len(hits)-i)
			break
		}
		fmt.Fprintf(&b, "  %s body=%.60s\n", h, h.Body)
	}
	return b.String()
}

// barrier sends a fresh payload through the relay at url that the
// upstream answers 503 twice before it takes it, and waits until it is
// delivered. Attempts are dispatched in the order they fall due, so once
// the barrier's third attempt is through, any retry the relay had
// scheduled within two backoff steps before the barrier was sent has been
// made: the absence of a retry that should not happen can then be checked.
// The upstream must answer marked("barrier", sequence(503, 503, 200), ...).
func barrier(t *testing.T, u *upstream, url string) {
	t.Helper()
	body := payload(t, `"barrier":true`)
	mustAccept(t, url, body)
	u.waitDelivered(t, body)
}

// barrierResponder wraps r so that barrier payloads are answered 503, 503,
// then 200.
func barrierResponder(r responder) responder {
	return marked(`"barrier":true`, sequence(503, 503, 200), r)
}
