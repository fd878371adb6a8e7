package delivery

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// An upstream that takes connections but never answers is probed by one
// attempt at a time once unreachableAfter attempts in a row went
// unanswered, and everything is delivered once it answers again.
func TestUnansweringUpstreamIsProbedOneAtATime(t *testing.T) {
	const payloads, concurrency = 40, 8
	var answering atomic.Bool
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer {
		if answering.Load() {
			return testkit.Answer{}
		}
		// hold the connection a while, then drop it without an answer
		return testkit.Answer{Delay: 20 * time.Millisecond, Drop: true}
	})

	store := queue.NewMemory(queue.Options{Window: time.Hour})
	for i := range payloads {
		admit(t, store, fmt.Sprint("k", i), "{}")
	}
	s := settingsFor(t, up.URL)
	s.Concurrency = concurrency
	startEngine(t, store, s)

	// Before the outage is known, each of the first attempts frees a place
	// that another takes: up to concurrency+unreachableAfter-1 of them.
	// Every one after that is a probe, alone: the only request open when it
	// arrives.
	const before, probes = concurrency + unreachableAfter - 1, 6
	reqs := up.WaitFor(t, 10*time.Second, fmt.Sprint(before+probes, " attempts"), func(reqs []*testkit.Request) bool {
		return len(reqs) >= before+probes
	})
	answering.Store(true)
	var overlaps []int // requests open at each unanswered one's arrival, in order
	for _, r := range reqs {
		overlaps = append(overlaps, r.Open)
	}
	for i, n := range overlaps[before:] {
		if n != 1 {
			t.Errorf("attempt %d after the outage was found met %d attempts open at once; want 1 (all: %v)", i+1, n, overlaps)
			break
		}
	}

	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	up.WaitFor(t, 10*time.Second, fmt.Sprint(payloads, " payloads delivered"), func(reqs []*testkit.Request) bool {
		seen := map[string]bool{}
		for _, r := range reqs {
			if r.Status == 200 {
				seen[r.Key] = true
			}
		}
		return len(seen) == payloads
	})
	if st, _ := store.Stats(t.Context()); st.Dead != 0 {
		t.Errorf("%d dead letters; want none", st.Dead)
	}
}

// A config reload ends an outage: payloads waiting for the probe go to the
// new upstream at once, not after the probe's backoff.
func TestReloadEndsOutage(t *testing.T) {
	const payloads = 40
	var tried atomic.Int64
	silent := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer {
		tried.Add(1)
		return testkit.Answer{Drop: true}
	})
	fixed := testkit.NewUpstream(t, nil)

	store := queue.NewMemory(queue.Options{Window: time.Hour})
	for i := range payloads {
		admit(t, store, fmt.Sprint("k", i), "{}")
	}
	s := settingsFor(t, silent.URL)
	s.Backoff = Backoff{Initial: time.Hour, Max: time.Hour} // the next probe: an hour away
	e := startEngine(t, store, s)
	// The first concurrency attempts, and one more for each unanswered one
	// before the third, back off for an hour; the rest wait for a probe.
	tries := int64(s.Concurrency + unreachableAfter - 1)
	waitStats(t, store, func(queue.Stats) bool { return tried.Load() >= tries && e.InFlight() == 0 })

	e.SetSettings(settingsFor(t, fixed.URL))
	e.Wake()
	for range payloads - tries {
		fixed.Next(t)
	}
	if n := tried.Load(); n != tries {
		t.Errorf("the silent upstream saw %d attempts; want %d (one probe at a time, the next an hour away)", n, tries)
	}
}

// What attempts against the upstream of an earlier config learn does not
// count against the new one: a reload to a working upstream with less
// concurrency, while attempts at a hanging one are still running, must
// not take the new upstream for down before it was ever asked.
func TestReloadIgnoresAttemptsAtTheOldUpstream(t *testing.T) {
	hanging := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { return testkit.Answer{Hang: true} })
	fixed := testkit.NewUpstream(t, nil)

	store := queue.NewMemory(queue.Options{Window: time.Hour})
	for i := range 10 {
		admit(t, store, fmt.Sprint("k", i), "{}")
	}
	old := settingsFor(t, hanging.URL)
	old.Timeout = 300 * time.Millisecond
	old.Backoff = Backoff{Initial: time.Hour, Max: time.Hour}
	e := startEngine(t, store, old)
	waitStats(t, store, func(queue.Stats) bool { return e.InFlight() == old.Concurrency })

	// the attempts at the hanging upstream time out after the reload
	next := settingsFor(t, fixed.URL)
	next.Concurrency = 1
	next.Backoff = Backoff{Initial: time.Hour, Max: time.Hour}
	e.SetSettings(next)
	e.Wake()
	for range 10 - old.Concurrency {
		fixed.Next(t)
	}
}
