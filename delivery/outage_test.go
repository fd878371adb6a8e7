package delivery

import (
	"context"
	"fmt"
	"sync"
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

// claimCounter is a memory store that counts the entries claimed and not
// yet given back: what the engine holds.
type claimCounter struct {
	*queue.Memory
	mu   sync.Mutex
	held map[string]bool
}

func (s *claimCounter) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	es, err := s.Memory.Claim(ctx, max)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range es {
		s.held[e.ID] = true
	}
	return es, err
}

func (s *claimCounter) drop(ids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		delete(s.held, id)
	}
}

func (s *claimCounter) Retry(ctx context.Context, e *queue.Entry, due time.Time) error {
	s.drop(e.ID)
	return s.Memory.Retry(ctx, e, due)
}

func (s *claimCounter) Release(ctx context.Context, ids []string) error {
	s.drop(ids...)
	return s.Memory.Release(ctx, ids)
}

func (s *claimCounter) Ack(ctx context.Context, id string) error {
	s.drop(id)
	return s.Memory.Ack(ctx, id)
}

func (s *claimCounter) Bury(ctx context.Context, e *queue.Entry) error {
	s.drop(e.ID)
	return s.Memory.Bury(ctx, e)
}

func (s *claimCounter) holding() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

// While the upstream is down the engine holds the probe and nothing else:
// the payloads waiting for it stay in the store, where another process of
// a shared store may take them.
func TestOutageHoldsOnlyTheProbe(t *testing.T) {
	const payloads, concurrency = 40, 8
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer {
		return testkit.Answer{Delay: 20 * time.Millisecond, Drop: true}
	})
	store := &claimCounter{Memory: queue.NewMemory(queue.Options{Window: time.Hour}), held: map[string]bool{}}
	for i := range payloads {
		admit(t, store.Memory, fmt.Sprint("k", i), "{}")
	}
	s := settingsFor(t, up.URL)
	s.Concurrency = concurrency
	startEngine(t, store, s)

	const before = concurrency + unreachableAfter - 1
	most := 0
	up.WaitFor(t, 10*time.Second, "probes", func(reqs []*testkit.Request) bool {
		if len(reqs) > before+1 {
			most = max(most, store.holding())
		}
		return len(reqs) >= before+6
	})
	if most > 1 {
		t.Errorf("the engine held %d payloads while the upstream was down; want the probe only", most)
	}
}
