package testkit

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
)

// fakeT records a failure instead of ending the test.
type fakeT struct {
	testing.TB
	failed string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	panic(f)
}
func (f *fakeT) Errorf(format string, args ...any) { f.failed += fmt.Sprintf(format, args...) + "\n" }

// failure runs fn with a fakeT and returns what it failed with.
func failure(t *testing.T, fn func(tb testing.TB)) (msg string) {
	f := &fakeT{TB: t}
	defer func() {
		if v := recover(); v != nil && v != any(f) {
			panic(v)
		}
		msg = f.failed
	}()
	fn(f)
	return
}

func TestEventually(t *testing.T) {
	var n atomic.Int32
	Eventually(t, 5*time.Second, func() bool { return n.Add(1) == 5 }, "never")

	state := "start"
	msg := failure(t, func(tb testing.TB) {
		Eventually(tb, 30*time.Millisecond, func() bool { state = "end"; return false }, "state %s, %v", Lazy(func() string { return state }), 7)
	})
	if msg != "after 30ms: state end, 7" {
		t.Errorf("failed with %q; want the state at the deadline", msg)
	}
}

func TestPoll(t *testing.T) {
	var n atomic.Int32
	if !Poll(5*time.Second, func() bool { return n.Add(1) == 5 }) {
		t.Error("Poll reported false for a condition that came to hold")
	}
	start := time.Now()
	if Poll(30*time.Millisecond, func() bool { return false }) {
		t.Error("Poll reported true for a condition that never held")
	}
	if took := time.Since(start); took < 30*time.Millisecond {
		t.Errorf("Poll gave up after %s, before its timeout", took)
	}
}

func post(t *testing.T, url, key, body string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("X-Webhook-Relay-Attempt", "2")
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

func TestUpstreamRecordsAndAnswers(t *testing.T) {
	u := NewUpstream(t, func(r *Request) Answer {
		if r.Nth == 1 {
			return Answer{Status: 503, Header: http.Header{"Retry-After": {"7"}}}
		}
		return Answer{}
	})
	resp, err := post(t, u.URL+"/hook?a=1", "k", "one")
	if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "7" {
		t.Fatalf("first answer %v, %v; want 503 with Retry-After 7", resp, err)
	}
	if resp, err := post(t, u.URL+"/hook?a=1", "k", "two"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("second answer %v, %v; want 200", resp, err)
	}
	r := u.Next(t)
	if r.Method != "POST" || r.Path != "/hook" || r.RawQuery != "a=1" || string(r.Body) != "one" ||
		r.Key != "k" || r.Attempt != 2 || r.Nth != 1 || r.Status != 503 || r.Header.Get("Idempotency-Key") != "k" {
		t.Errorf("first request recorded as %+v", r)
	}
	if r := u.Next(t); string(r.Body) != "two" || r.Nth != 2 || r.Status != 200 {
		t.Errorf("second request recorded as %+v", r)
	}
	if n := len(u.Requests()); n != 2 {
		t.Errorf("%d requests recorded, want 2", n)
	}

	u.SetAnswer(func(*Request) Answer { return Answer{Status: 202} })
	if resp, err := post(t, u.URL, "k2", "three"); err != nil || resp.StatusCode != 202 {
		t.Fatalf("answer after SetAnswer %v, %v; want 202", resp, err)
	}
}

func TestUpstreamDropHangDelay(t *testing.T) {
	u := NewUpstream(t, func(r *Request) Answer {
		switch string(r.Body) {
		case "drop":
			return Answer{Drop: true}
		case "hang":
			return Answer{Hang: true}
		}
		return Answer{Delay: 50 * time.Millisecond}
	})
	if _, err := post(t, u.URL, "d", "drop"); err == nil {
		t.Error("a dropped request got an answer")
	}
	go func() { _, _ = post(t, u.URL, "h", "hang") }()
	u.WaitFor(t, 5*time.Second, "the hanging request", func(reqs []*Request) bool { return len(reqs) == 2 })
	if n := u.InFlight(); n != 1 {
		t.Errorf("%d requests in flight, want the hanging one", n)
	}
	resp, err := post(t, u.URL, "late", "late")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("delayed answer %v, %v; want 200", resp, err)
	}
	reqs := u.Requests()
	if reqs[0].Status != 0 || reqs[1].Status != 0 || reqs[2].Status != 200 {
		t.Errorf("statuses recorded: %d %d %d; want 0 0 200", reqs[0].Status, reqs[1].Status, reqs[2].Status)
	}

	// A client that leaves before a delayed answer gets none.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u.URL, strings.NewReader("gone"))
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("a client that left got an answer")
	}
	Eventually(t, 5*time.Second, func() bool { return u.InFlight() == 1 }, "the delayed request never ended")
	if r := u.Requests()[3]; r.Status != 0 {
		t.Errorf("a request whose client left is recorded with status %d, want 0", r.Status)
	}
}

func TestUpstreamStopStart(t *testing.T) {
	u := NewUpstream(t, nil)
	u.Stop()
	u.Stop()
	if _, err := post(t, u.URL, "k", "x"); err == nil {
		t.Fatal("a stopped upstream answered")
	}
	u.Start()
	if resp, err := post(t, u.URL, "k", "x"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after Start: %v, %v; want 200", resp, err)
	}
	if r := u.Next(t); r.Nth != 1 || r.Status != 200 {
		t.Errorf("recorded %+v", r)
	}
}

func TestPanicLogged(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	guard.Run(log, "the loop", func() { panic("boom") })
	guard.Run(log, "the other loop", func() { panic("bang") })
	log.Info("no stack here")
	PanicLogged(t, logs, "testkit_test.go", Panic{"the other loop", "bang"}, Panic{"the loop", "boom"})

	for _, tc := range []struct {
		name string
		want []Panic
		msg  string
	}{
		{"fewer", []Panic{{"the loop", "boom"}}, "2 log entries with a stack, want 1"},
		{"other value", []Panic{{"the loop", "boom"}, {"the other loop", "boom"}}, `logged a panic in "the other loop" with value "bang"`},
	} {
		if msg := failure(t, func(tb testing.TB) { PanicLogged(tb, logs, "testkit_test.go", tc.want...) }); !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: failed with %q; want %q", tc.name, msg, tc.msg)
		}
	}
	if msg := failure(t, func(tb testing.TB) {
		PanicLogged(tb, logs, "elsewhere_test.go", Panic{"the loop", "boom"}, Panic{"the other loop", "bang"})
	}); !strings.Contains(msg, "without a stack through elsewhere_test.go") {
		t.Errorf("a stack through another file: failed with %q", msg)
	}
}

func TestUpstreamUntilAndOpen(t *testing.T) {
	release := make(chan struct{})
	u := NewUpstream(t, func(*Request) Answer { return Answer{Status: 201, Until: release} })
	done := make(chan error, 2)
	for range 2 {
		go func() {
			resp, err := post(t, u.URL, "k", "x")
			if err == nil && resp.StatusCode != 201 {
				err = fmt.Errorf("status %d, want 201", resp.StatusCode)
			}
			done <- err
		}()
	}
	reqs := u.WaitFor(t, 5*time.Second, "two requests", func(reqs []*Request) bool { return len(reqs) == 2 })
	if reqs[0].Open != 1 || reqs[1].Open != 2 || reqs[0].Status != 0 {
		t.Errorf("open %d, %d and status %d before release; want 1, 2 and 0", reqs[0].Open, reqs[1].Open, reqs[0].Status)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	for _, r := range u.Requests() {
		if r.Status != 201 {
			t.Errorf("recorded status %d after release, want 201", r.Status)
		}
	}
	if reqs[0].Status != 0 {
		t.Error("a snapshot taken before the answer changed")
	}
}
