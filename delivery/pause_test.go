package delivery

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// pauseWatcher is a memory store that counts the engine's reads of the
// pauses and its claims.
type pauseWatcher struct {
	queue.Store
	reads, claims atomic.Int32
}

func (s *pauseWatcher) Paused(ctx context.Context) ([]string, error) {
	s.reads.Add(1)
	return s.Store.Paused(ctx)
}

func (s *pauseWatcher) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	s.claims.Add(1)
	return s.Store.Claim(ctx, max)
}

// readsPast waits until the engine has read the pauses more than n times.
func (s *pauseWatcher) readsPast(t *testing.T, n int32) int32 {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, func() bool { return s.reads.Load() > n },
		"the engine read the pauses %d times, want more than %d", testkit.Lazy(func() string { return strconv.Itoa(int(s.reads.Load())) }), n)
	return s.reads.Load()
}

func setPaused(t *testing.T, s queue.Store, paused bool) {
	t.Helper()
	if err := s.SetPaused(t.Context(), DefaultDestination, paused); err != nil {
		t.Fatal(err)
	}
}

// A destination paused before the engine starts gets nothing claimed nor
// attempted, however often the engine looks; a resume and a Wake deliver
// at once, without waiting for a poll.
func TestPausedClaimsNothingAndWakeResumes(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(200))
	store := &pauseWatcher{Store: queue.NewMemory(queue.Options{Window: time.Hour})}
	setPaused(t, store, true)
	for _, k := range []string{"a", "b", "c"} {
		admit(t, store, k, `"`+k+`"`)
	}
	e := Start(Config{Store: store, Settings: settingsFor(t, up.URL), PollInterval: time.Hour})
	t.Cleanup(func() { e.Stop(time.Second) })

	n := store.readsPast(t, 0)
	e.Wake() // a second round, after the first one's claim would have been
	store.readsPast(t, n)
	if !e.Paused() {
		t.Errorf("Paused() = false with the destination paused in the store")
	}
	if c := store.claims.Load(); c != 0 {
		t.Errorf("the engine claimed %d times while its destination was paused", c)
	}
	if got := len(up.Requests()); got != 0 {
		t.Errorf("the upstream got %d requests while paused", got)
	}

	setPaused(t, store, false)
	e.Wake()
	up.WaitFor(t, 5*time.Second, "the 3 payloads after the resume (the poll is an hour away)",
		func(reqs []*testkit.Request) bool { return len(reqs) == 3 })
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	if e.Paused() {
		t.Errorf("Paused() = true after the resume")
	}
}

// A pause set while the engine delivers lets the attempt that runs finish,
// gives back what waits, and starts nothing more until the resume; the
// engine notices it by itself within a poll interval (a pause set through
// another process of a shared store wakes nobody here).
func TestPauseLetsRunningAttemptFinish(t *testing.T) {
	gate := make(chan struct{})
	up := testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		if r.Nth == 1 {
			return testkit.Answer{Until: gate}
		}
		return testkit.Answer{}
	})
	store := &pauseWatcher{Store: queue.NewMemory(queue.Options{Window: time.Hour})}
	for _, k := range []string{"a", "b", "c"} {
		admit(t, store, k, `"`+k+`"`)
	}
	s := settingsFor(t, up.URL)
	s.Concurrency = 1
	e := Start(Config{Store: store, Settings: s, PollInterval: 20 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })
	testkit.Eventually(t, 5*time.Second, func() bool { return up.InFlight() == 1 }, "the first attempt never reached the upstream")

	setPaused(t, store, true) // no Wake: the poll finds it
	testkit.Eventually(t, 5*time.Second, e.Paused, "the engine never noticed the pause")
	close(gate)
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 2 })
	store.readsPast(t, store.reads.Load()+3) // several rounds while paused
	if got := len(up.Requests()); got != 1 {
		t.Fatalf("the upstream got %d requests; want the one running when the pause came", got)
	}
	if st := waitStats(t, store, func(queue.Stats) bool { return true }); st.Backlog != 2 {
		t.Errorf("backlog %d while paused, want 2", st.Backlog)
	}

	setPaused(t, store, false)
	up.WaitFor(t, 5*time.Second, "the other 2 after the resume", func(reqs []*testkit.Request) bool { return len(reqs) == 3 })
}

// The engine reads the pause of its own destination only.
func TestPauseOfAnotherDestination(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(200))
	store := &pauseWatcher{Store: queue.NewMemory(queue.Options{Window: time.Hour})}
	if err := store.SetPaused(t.Context(), "archive", true); err != nil {
		t.Fatal(err)
	}
	admit(t, store, "a", `"a"`)
	s := settingsFor(t, up.URL)
	s.Destination = "app"
	startEngine(t, store, s)
	up.Next(t)
}
