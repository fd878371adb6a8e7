package testkit

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Request is one request an Upstream received.
type Request struct {
	Method   string
	Path     string
	RawQuery string
	Header   http.Header
	Body     []byte
	At       time.Time
	// Key is the Idempotency-Key header, Attempt the attempt-number header
	// (X-Webhook-Relay-Attempt).
	Key     string
	Attempt int
	// Nth counts the requests with this Key so far, this one included.
	Nth int
	// Open counts the requests not yet answered when this one arrived,
	// this one included.
	Open int
	// Status is what the upstream answered: 0 for a hang, a dropped
	// connection, a delayed answer not yet written, or one whose client
	// left before it was.
	Status int
}

func (r *Request) String() string {
	return fmt.Sprintf("%s %s?%s key=%q attempt=%d -> %d", r.Method, r.Path, r.RawQuery, r.Key, r.Attempt, r.Status)
}

// Answer is what an Upstream answers to one request.
type Answer struct {
	// Status is the answer's status; 0 means 200.
	Status int
	Header http.Header
	// Delay is how long to take before answering (or hanging, or
	// dropping). A client that gives up meanwhile gets nothing, and the
	// request's Status stays 0.
	Delay time.Duration
	// Until, if not nil, holds the answer (or the hang, or the drop) back
	// until it is closed, as Delay does.
	Until <-chan struct{}
	// Hang keeps the request open, unanswered, until the client gives up
	// or the upstream stops.
	Hang bool
	// Drop closes the connection without an answer.
	Drop bool
}

// Always answers every request with status.
func Always(status int) func(*Request) Answer {
	return func(*Request) Answer { return Answer{Status: status} }
}

// Upstream is a real HTTP server on 127.0.0.1 standing in for the
// application behind the relay. It records every request, answers each as
// its answer function says, and can be stopped (connections refused) and
// started again on the same port. Its methods are safe for concurrent use.
type Upstream struct {
	*Server

	mu       sync.Mutex
	answer   func(*Request) Answer
	reqs     []*Request
	perKey   map[string]int
	changed  chan struct{} // closed and replaced on every change of reqs
	inFlight int
	next     int // the first request Next has not returned
}

// NewUpstream starts an upstream on a free port of 127.0.0.1. answer picks
// the answer to each request (nil: 200 to every one); it is called with
// the upstream's lock held, one request at a time, so it may keep state
// without a lock of its own. The upstream stops when the test ends.
func NewUpstream(t testing.TB, answer func(*Request) Answer) *Upstream {
	t.Helper()
	return ListenUpstream(t, "127.0.0.1:0", answer)
}

// ListenUpstream is NewUpstream on addr, e.g. an address that was free a
// moment ago: it tries again for 5s while the port lingers.
func ListenUpstream(t testing.TB, addr string, answer func(*Request) Answer) *Upstream {
	t.Helper()
	u := &Upstream{perKey: make(map[string]int), changed: make(chan struct{})}
	u.SetAnswer(answer)
	// u.Server is set before the handler can run
	s, ln := bind(t, addr, http.HandlerFunc(u.handle))
	u.Server = s
	s.serve(ln)
	t.Cleanup(s.Stop)
	return u
}

// SetAnswer replaces the answer function (nil: 200 to every request).
func (u *Upstream) SetAnswer(answer func(*Request) Answer) {
	if answer == nil {
		answer = func(*Request) Answer { return Answer{} }
	}
	u.mu.Lock()
	u.answer = answer
	u.mu.Unlock()
}

func (u *Upstream) handle(w http.ResponseWriter, r *http.Request) {
	stop := u.Stopped()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := &Request{
		Method:   r.Method,
		Path:     r.URL.Path,
		RawQuery: r.URL.RawQuery,
		Header:   r.Header.Clone(),
		Body:     body,
		At:       time.Now(),
		Key:      r.Header.Get("Idempotency-Key"),
	}
	req.Attempt, _ = strconv.Atoi(r.Header.Get("X-Webhook-Relay-Attempt"))

	u.mu.Lock()
	u.perKey[req.Key]++
	req.Nth = u.perKey[req.Key]
	u.inFlight++
	req.Open = u.inFlight
	a := u.answer(req)
	status := a.Status
	if status == 0 {
		status = http.StatusOK
	}
	waits := a.Delay > 0 || a.Until != nil
	if !a.Hang && !a.Drop && !waits {
		req.Status = status
	}
	n := len(u.reqs)
	u.reqs = append(u.reqs, req)
	u.notify()
	u.mu.Unlock()
	// answered ends the request's count in flight, before the client can
	// see its answer (or its end) and send another.
	answered := sync.OnceFunc(func() {
		u.mu.Lock()
		u.inFlight--
		u.mu.Unlock()
	})
	defer answered()

	if waits {
		var timer <-chan time.Time
		if a.Delay > 0 {
			t := time.NewTimer(a.Delay)
			defer t.Stop()
			timer = t.C
		}
		for timer != nil || a.Until != nil {
			select {
			case <-timer:
				timer = nil
			case <-a.Until:
				a.Until = nil
			case <-r.Context().Done():
				return // the client gave up on this request: not answered
			case <-stop:
				return
			}
		}
		if !a.Hang && !a.Drop {
			u.mu.Lock()
			done := *u.reqs[n]
			done.Status = status
			u.reqs[n] = &done // a new value: snapshots handed out stay as they were
			u.notify()
			u.mu.Unlock()
		}
	}
	switch {
	case a.Hang:
		select {
		case <-r.Context().Done():
		case <-stop:
		}
		return
	case a.Drop:
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			answered()
			conn.Close()
		}
		return
	}
	for name, values := range a.Header {
		w.Header()[name] = values
	}
	answered()
	w.WriteHeader(status)
}

// notify wakes WaitFor and Next; u.mu is held.
func (u *Upstream) notify() {
	close(u.changed)
	u.changed = make(chan struct{})
}

// Requests returns what the upstream received so far, in order.
func (u *Upstream) Requests() []*Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*Request(nil), u.reqs...)
}

// InFlight returns how many requests are not answered yet: delayed,
// hanging, or about to be answered.
func (u *Upstream) InFlight() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.inFlight
}

// WaitFor waits until ok holds for what the upstream received, and returns
// that. It fails the test after timeout, listing what it received.
func (u *Upstream) WaitFor(t testing.TB, timeout time.Duration, what string, ok func(reqs []*Request) bool) []*Request {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		u.mu.Lock()
		reqs, changed := append([]*Request(nil), u.reqs...), u.changed
		u.mu.Unlock()
		if ok(reqs) {
			return reqs
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("upstream: timed out after %s waiting for %s; it received %d requests:\n%s",
				timeout, what, len(reqs), Describe(reqs))
		}
	}
}

// Next returns the first request that Next has not returned yet, waiting
// up to 10s for one.
func (u *Upstream) Next(t testing.TB) *Request {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		u.mu.Lock()
		if u.next < len(u.reqs) {
			r := u.reqs[u.next]
			u.next++
			u.mu.Unlock()
			return r
		}
		changed := u.changed
		u.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatal("upstream got nothing within 10s")
		}
	}
}

// Describe lists requests for a failure message, at most 50.
func Describe(reqs []*Request) string {
	var b strings.Builder
	for i, r := range reqs {
		if i == 50 {
			fmt.Fprintf(&b, "  ... %d more\n", len(reqs)-i)
			break
		}
		fmt.Fprintf(&b, "  %s body=%.60s\n", r, r.Body)
	}
	return b.String()
}
