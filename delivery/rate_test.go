package delivery

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/ratelimit"
)

// gate is a Limiter the test opens start by start: Take grants a start
// only while grants are left, else it says wait, or fails while err is set.
type gate struct {
	mu      sync.Mutex
	grants  int
	refused int // Takes answered "wait" or failed
	err     error
}

func (g *gate) Take(context.Context) (time.Duration, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.err != nil:
		g.refused++
		return 0, g.err
	case g.grants > 0:
		g.grants--
		return 0, nil
	}
	g.refused++
	return 5 * time.Millisecond, nil
}

func (g *gate) set(f func(g *gate)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

func (g *gate) refusals() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.refused
}

// waitRefused waits until the loop has asked and been refused n more times:
// it is asking, and starting nothing.
func (g *gate) waitRefused(t *testing.T, n int) {
	t.Helper()
	from := g.refusals()
	testkit.Eventually(t, 10*time.Second, func() bool { return g.refusals() >= from+n }, "the loop stopped asking the limiter")
}

// TestRateAskedBeforeEachAttempt: no attempt starts without the limiter's
// start, retries included, and the loop holds only what a second of the
// rate starts.
func TestRateAskedBeforeEachAttempt(t *testing.T) {
	fail := true
	var mu sync.Mutex
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			fail = false
			return testkit.Answer{Status: 503}
		}
		return testkit.Answer{Status: 200}
	})
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	g := &gate{grants: 3}
	s := settingsFor(t, up.URL)
	s.Limiter, s.Rate = g, ratelimit.Rate{N: 2, Per: time.Second}
	startEngine(t, store, s)
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		admit(t, store, k, `{}`)
	}
	up.WaitFor(t, 10*time.Second, "3 attempts", func(r []*testkit.Request) bool { return len(r) == 3 })
	g.waitRefused(t, 5)
	if n := len(up.Requests()); n != 3 {
		t.Fatalf("%d attempts with 3 starts granted", n)
	}
	// the first failed: its retry takes a start too
	g.set(func(g *gate) { g.grants = 2 })
	up.WaitFor(t, 10*time.Second, "5 attempts", func(r []*testkit.Request) bool { return len(r) == 5 })
	g.waitRefused(t, 5)
	if n := len(up.Requests()); n != 5 {
		t.Fatalf("%d attempts with 5 starts granted", n)
	}
	if st, _ := store.Stats(t.Context()); st.Backlog != 2 {
		t.Fatalf("backlog %d, want 2 (4 of 6 delivered in 5 attempts)", st.Backlog)
	}
	g.set(func(g *gate) { g.grants = 100 })
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	if n := len(up.Requests()); n != 7 {
		t.Fatalf("%d attempts for 6 payloads and one retry", n)
	}
}

func TestRateReady(t *testing.T) {
	for _, c := range []struct {
		rate ratelimit.Rate
		want int
	}{
		{ratelimit.Rate{}, 64},
		{ratelimit.Rate{N: 1, Per: time.Minute}, 1},
		{ratelimit.Rate{N: 5, Per: time.Second}, 5},
		{ratelimit.Rate{N: 300, Per: time.Minute}, 5},
		{ratelimit.Rate{N: 3, Per: time.Second}, 3},
		{ratelimit.Rate{N: 1000, Per: time.Second}, 64},
	} {
		s := &Settings{Rate: c.rate}
		if !c.rate.IsZero() {
			s.Limiter = ratelimit.NewLocal(c.rate, nil)
		}
		if got := rateReady(s, 64); got != c.want {
			t.Errorf("rateReady(%s) = %d, want %d", c.rate, got, c.want)
		}
	}
}

// TestRateLimiterErrorStartsNothing: a limiter that fails (its Redis
// down) starts no attempt; the loop logs it once, keeps asking, and
// delivers once it answers, saying so.
func TestRateLimiterErrorStartsNothing(t *testing.T) {
	defer func(w time.Duration) { rateErrorWait = w }(rateErrorWait)
	rateErrorWait = 5 * time.Millisecond
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { return testkit.Answer{Status: 200} })
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	g := &gate{err: errors.New("rate limit 5/s: redis: connection refused")}
	s := settingsFor(t, up.URL)
	s.Limiter, s.Rate = g, ratelimit.Rate{N: 5, Per: time.Second}
	core, logs := observer.New(zap.InfoLevel)
	s.Logger = zap.New(core)
	startEngine(t, store, s)
	admit(t, store, "a", `{}`)
	g.waitRefused(t, 5)
	if n := len(up.Requests()); n != 0 {
		t.Fatalf("%d attempts while the limiter failed", n)
	}
	if n := logs.FilterMessageSnippet("cannot ask the destination's rate limit").Len(); n != 1 {
		t.Fatalf("the failing limiter logged %d times, want once", n)
	}
	g.set(func(g *gate) { g.err, g.grants = nil, 1 })
	up.Next(t)
	testkit.Eventually(t, 5*time.Second, func() bool {
		return logs.FilterMessageSnippet("rate limit answers again").Len() == 1
	}, "no log of the limiter answering again")
}
