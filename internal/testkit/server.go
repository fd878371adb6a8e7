package testkit

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// Server serves a handler on 127.0.0.1 and can be stopped (connections
// refused) and started again on the same port: an upstream going down and
// coming back. Upstream is one; a test with a handler of its own uses it
// directly.
type Server struct {
	// URL is http://<Addr>, no path.
	URL  string
	Addr string

	t       testing.TB
	handler http.Handler

	mu   sync.Mutex
	srv  *http.Server
	stop chan struct{} // closed by Stop
}

// NewServer starts serving h on addr: "127.0.0.1:0" for a free port, or an
// address that was free a moment ago (it tries again for 5s while the
// port lingers). It stops when the test ends.
func NewServer(t testing.TB, addr string, h http.Handler) *Server {
	t.Helper()
	s, ln := bind(t, addr, h)
	s.serve(ln)
	t.Cleanup(s.Stop)
	return s
}

// bind listens on addr for a server of h, not serving yet.
func bind(t testing.TB, addr string, h http.Handler) (*Server, net.Listener) {
	t.Helper()
	ln := listen(t, addr)
	return &Server{URL: "http://" + ln.Addr().String(), Addr: ln.Addr().String(), t: t, handler: h}, ln
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	Eventually(t, 5*time.Second, func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	}, "cannot listen on %s: %v", addr, Lazy(func() string { return fmt.Sprint(err) }))
	return ln
}

func (s *Server) serve(ln net.Listener) {
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: time.Minute}
	s.mu.Lock()
	s.srv, s.stop = srv, make(chan struct{})
	s.mu.Unlock()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.t.Errorf("server %s: %v", s.Addr, err)
		}
	}()
}

// Running reports whether the server listens.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv != nil
}

// Stopped returns a channel that is closed when the server stops: what a
// handler that holds a request waits for besides the request's end. It is
// closed already while the server is stopped.
func (s *Server) Stopped() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return s.stop
}

// Stop closes the listener and every connection at once. Stopping a
// stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	srv, stop := s.srv, s.stop
	s.srv, s.stop = nil, nil
	s.mu.Unlock()
	if srv != nil {
		close(stop)
		_ = srv.Close()
	}
}

// Start listens on the server's address again; starting a running server
// does nothing.
func (s *Server) Start() {
	s.t.Helper()
	if s.Running() {
		return
	}
	s.serve(listen(s.t, s.Addr))
}
