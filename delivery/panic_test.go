package delivery

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// panickyStore is a memory store one of whose methods panics, before it
// does anything, the first times it is called: a store call that blows up.
type panickyStore struct {
	*queue.Memory
	method   string
	left     atomic.Int32  // panics still to come
	panicked chan struct{} // closed at the first panic
	once     sync.Once
	// failClaim makes that Claim call (1 for the first) return an error.
	failClaim int32
	claims    atomic.Int32
}

func newPanickyStore(method string, times int) *panickyStore {
	s := &panickyStore{Memory: queue.NewMemory(queue.Options{Window: time.Hour}), method: method, panicked: make(chan struct{})}
	s.left.Store(int32(times))
	return s
}

func (s *panickyStore) maybePanic(method string) {
	if method == s.method && s.left.Add(-1) >= 0 {
		s.once.Do(func() { close(s.panicked) })
		panic("injected panic in " + method)
	}
}

func (s *panickyStore) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	s.maybePanic("Claim")
	if s.claims.Add(1) == s.failClaim {
		return nil, errors.New("store down (test)")
	}
	return s.Memory.Claim(ctx, max)
}

func (s *panickyStore) Body(ctx context.Context, id string) ([]byte, error) {
	s.maybePanic("Body")
	return s.Memory.Body(ctx, id)
}

func (s *panickyStore) Extend(ctx context.Context, ids []string) error {
	s.maybePanic("Extend")
	return s.Memory.Extend(ctx, ids)
}

func (s *panickyStore) Retry(ctx context.Context, e *queue.Entry, due time.Time) error {
	s.maybePanic("Retry")
	return s.Memory.Retry(ctx, e, due)
}

func (s *panickyStore) NextDue(ctx context.Context) (time.Time, error) {
	s.maybePanic("NextDue")
	return s.Memory.NextDue(ctx)
}

func (s *panickyStore) Ack(ctx context.Context, id string) error {
	s.maybePanic("Ack")
	return s.Memory.Ack(ctx, id)
}

func (s *panickyStore) Bury(ctx context.Context, e *queue.Entry) error {
	s.maybePanic("Bury")
	return s.Memory.Bury(ctx, e)
}

func (s *panickyStore) Release(ctx context.Context, ids []string) error {
	s.maybePanic("Release")
	return s.Memory.Release(ctx, ids)
}

func (s *panickyStore) TrimDead(ctx context.Context, max int, cutoff time.Time, limit int) ([]*queue.Entry, error) {
	s.maybePanic("TrimDead")
	return s.Memory.TrimDead(ctx, max, cutoff, limit)
}

// checkNothingHeld checks that no attempt is counted in flight and no body
// holds the memory budget.
func checkNothingHeld(t *testing.T, e *Engine, mem *budget.Budget) {
	t.Helper()
	if n := e.InFlight(); n != 0 {
		t.Errorf("%d attempts in flight after the backlog emptied", n)
	}
	if n := mem.Used(); n != 0 {
		t.Errorf("the memory budget holds %d bytes after the backlog emptied", n)
	}
}

// failOnce answers 503 to the first request and 200 to the others.
func failOnce(n int) int {
	if n == 1 {
		return 503
	}
	return 200
}

// A store call that panics is a failed call: the panic is logged once with
// its stack, the process goes on, and the payload is still delivered (or,
// refused by the upstream, buried).
func TestStorePanicsAreRecovered(t *testing.T) {
	for _, tc := range []struct {
		method string
		answer func(n int) int // the upstream's answer to its n-th request
		hits   int             // requests the upstream gets in all
		dead   int
	}{
		{method: "Claim", answer: func(int) int { return 200 }, hits: 1},
		{method: "Body", answer: func(int) int { return 200 }, hits: 1},
		// delivered, then the Ack is done again; not sent again
		{method: "Ack", answer: func(int) int { return 200 }, hits: 1},
		// the failed entry stays held and is tried again from memory
		{method: "Retry", answer: failOnce, hits: 2},
		{method: "NextDue", answer: func(int) int { return 200 }, hits: 1},
		{method: "Bury", answer: func(int) int { return 422 }, hits: 2, dead: 1},
	} {
		t.Run(tc.method, func(t *testing.T) {
			n := 0
			up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { n++; return testkit.Answer{Status: tc.answer(n)} })
			store := newPanickyStore(tc.method, 1)
			core, logs := observer.New(zap.DebugLevel)
			mem := budget.New(1<<20, 0)
			e := Start(Config{Store: store, Settings: settingsFor(t, up.URL), Logger: zap.New(core), Budget: mem,
				PollInterval: 20 * time.Millisecond})
			t.Cleanup(func() { e.Stop(time.Second) })
			admit(t, store.Memory, "k", `{"a":1}`)

			waitStats(t, store.Memory, func(st queue.Stats) bool { return st.Backlog == 0 && st.Dead == tc.dead })
			select {
			case <-store.panicked:
			default:
				t.Fatalf("%s never panicked", tc.method)
			}
			for range tc.hits {
				if got := up.Next(t); string(got.Body) != `{"a":1}` {
					t.Fatalf("upstream got %q", got.Body)
				}
			}
			if extra := len(up.Requests()) - tc.hits; extra != 0 {
				t.Errorf("upstream got %d requests more than the %d wanted", extra, tc.hits)
			}
			testkit.PanicLogged(t, logs, "panic_test.go", testkit.Panic{Running: "the store's " + tc.method, Value: "injected panic in " + tc.method})
			checkNothingHeld(t, e, mem)
		})
	}
}

// Extend runs in the loop while an attempt is out: its panic leaves the loop
// and the attempt going.
func TestExtendPanicKeepsTheLoop(t *testing.T) {
	store := newPanickyStore("Extend", 1)
	// answers once the loop tried to extend the claim
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { return testkit.Answer{Until: store.panicked} })
	core, logs := observer.New(zap.DebugLevel)
	e := Start(Config{Store: store, Settings: settingsFor(t, up.URL), Logger: zap.New(core),
		PollInterval: 20 * time.Millisecond, LeaseRefresh: 5 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })
	admit(t, store.Memory, "k", `{}`)

	up.Next(t)
	waitStats(t, store.Memory, func(st queue.Stats) bool { return st.Backlog == 0 })
	testkit.PanicLogged(t, logs, "panic_test.go", testkit.Panic{Running: "the store's Extend", Value: "injected panic in Extend"})
}

// Release runs at Stop: its panic is logged and Stop still returns. The
// entry released is one held waiting for a place (failed ones wait in the
// store, not in the engine).
func TestReleasePanicAtStop(t *testing.T) {
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { return testkit.Answer{Hang: true} })
	store := newPanickyStore("Release", 1)
	core, logs := observer.New(zap.DebugLevel)
	s := settingsFor(t, up.URL)
	s.Concurrency = 1
	s.Backoff = Backoff{Initial: time.Hour, Max: time.Hour}
	e := Start(Config{Store: store, Settings: s, Logger: zap.New(core)})
	admit(t, store.Memory, "k1", `{}`)
	admit(t, store.Memory, "k2", `{}`)
	up.Next(t)
	e.Stop(10 * time.Millisecond)

	testkit.PanicLogged(t, logs, "panic_test.go", testkit.Panic{Running: "the store's Release", Value: "injected panic in Release"})
	if logs.FilterMessageSnippet("cannot release queued payloads at shutdown").Len() != 1 {
		t.Errorf("the failed release was not reported: %v", logs.All())
	}
}

// panickyTransport panics at its first round trip, as a broken transport
// or middleware would.
type panickyTransport struct{ trips atomic.Int32 }

func (p *panickyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if p.trips.Add(1) == 1 {
		panic("injected panic in the transport")
	}
	return http.DefaultTransport.RoundTrip(r)
}

// A panic in the attempt itself is a failed attempt: counted, recorded and
// retried after the backoff, with nothing left held.
func TestAttemptPanicIsAFailedAttempt(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(200))
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	core, logs := observer.New(zap.DebugLevel)
	mem := budget.New(1<<20, 0)
	e := Start(Config{Store: store, Settings: settingsFor(t, up.URL), Logger: zap.New(core), Budget: mem,
		Transport: &panickyTransport{}, PollInterval: 20 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })
	admit(t, store, "k", `{}`)

	if got := up.Next(t); got.Header.Get(AttemptHeader) != "2" {
		t.Errorf("the upstream got attempt %q, want 2: the one that panicked counts", got.Header.Get(AttemptHeader))
	}
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	testkit.PanicLogged(t, logs, "panic_test.go", testkit.Panic{Running: "a delivery attempt", Value: "injected panic in the transport"})
	retried := logs.FilterMessage("delivery failed; will retry").All()
	if len(retried) != 1 || !strings.Contains(retried[0].ContextMap()["reason"].(string), "panicked") {
		t.Errorf("the panicked attempt was not recorded as a failure: %v", retried)
	}
	checkNothingHeld(t, e, mem)
}

// panickingCore is a log core that panics when it is to write msg, the first
// time: a panic in whatever the engine does right then.
type panickingCore struct {
	zapcore.Core
	msg  string
	left *atomic.Int32
}

func newPanickingLogger(msg string) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	left := new(atomic.Int32)
	left.Store(1)
	return zap.New(panickingCore{Core: core, msg: msg, left: left}), logs
}

func (c panickingCore) With(f []zapcore.Field) zapcore.Core {
	return panickingCore{Core: c.Core.With(f), msg: c.msg, left: c.left}
}

func (c panickingCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c panickingCore) Write(e zapcore.Entry, f []zapcore.Field) error {
	if e.Message == c.msg && c.left.Add(-1) >= 0 {
		panic("injected panic in the log")
	}
	return c.Core.Write(e, f)
}

// A panic in an attempt's bookkeeping, after the upstream answered, still
// hands the entry back to the loop: it is tried again, never stuck.
func TestBookkeepingPanicRetries(t *testing.T) {
	n := 0
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { n++; return testkit.Answer{Status: failOnce(n)} })
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	log, logs := newPanickingLogger("delivery failed; will retry")
	mem := budget.New(1<<20, 0)
	e := Start(Config{Store: store, Settings: settingsFor(t, up.URL), Logger: log, Budget: mem,
		PollInterval: 20 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })
	admit(t, store, "k", `{}`)

	up.Next(t)
	if got := up.Next(t); got.Header.Get(AttemptHeader) != "2" {
		t.Errorf("second request is attempt %q, want 2", got.Header.Get(AttemptHeader))
	}
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	testkit.PanicLogged(t, logs, "panic_test.go", testkit.Panic{Running: "a delivery attempt's bookkeeping", Value: "injected panic in the log"})
	checkNothingHeld(t, e, mem)
}

// A panic while a turn holds the body's bytes and its concurrency place
// (here as it logs that the store is readable again, right after loading the
// body) gives both back.
func TestPanicWhileHoldingTheBody(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(200))
	store := newPanickyStore("Body", 1) // so that the next Body logs the recovery
	log, logs := newPanickingLogger("store readable again; delivering")
	mem := budget.New(1<<20, 0)
	e := Start(Config{Store: store, Settings: settingsFor(t, up.URL), Logger: log, Budget: mem,
		PollInterval: 20 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })
	admit(t, store.Memory, "k", `{"a":1}`)

	if got := up.Next(t); string(got.Body) != `{"a":1}` {
		t.Fatalf("upstream got %q", got.Body)
	}
	waitStats(t, store.Memory, func(st queue.Stats) bool { return st.Backlog == 0 })
	testkit.PanicLogged(t, logs, "panic_test.go",
		testkit.Panic{Running: "the store's Body", Value: "injected panic in Body"},
		testkit.Panic{Running: "a delivery attempt's bookkeeping", Value: "injected panic in the log"})
	checkNothingHeld(t, e, mem)
}

// A panic in the loop itself (here while it logs a failed claim) is logged,
// and the loop goes on with what it holds and what is queued.
func TestLoopPanicKeepsDelivering(t *testing.T) {
	n := 0
	// the first payload is held, backing off, when the loop panics
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { n++; return testkit.Answer{Status: failOnce(n)} })
	store := newPanickyStore("", 0)
	store.failClaim = 2
	log, logs := newPanickingLogger("cannot read the queue from the store; retrying")
	s := settingsFor(t, up.URL)
	s.Backoff = Backoff{Initial: 50 * time.Millisecond, Max: 50 * time.Millisecond}
	admit(t, store.Memory, "first", `"first"`)
	e := Start(Config{Store: store, Settings: s, Logger: log, PollInterval: 20 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })

	up.Next(t)
	admit(t, store.Memory, "second", `"second"`)
	waitStats(t, store.Memory, func(st queue.Stats) bool { return st.Backlog == 0 })
	if store.claims.Load() < 3 {
		t.Fatalf("%d claims; the second should have failed and a third gone through", store.claims.Load())
	}
	testkit.PanicLogged(t, logs, "panic_test.go", testkit.Panic{Running: "the delivery loop", Value: "injected panic in the log"})
	if e.InFlight() != 0 {
		t.Errorf("%d attempts in flight after the backlog emptied", e.InFlight())
	}
}

// The trimmer survives a panicking TrimDead and a panicking DeadDropped:
// dead letters still end within max_dead, and each one removed is logged
// and reported.
func TestTrimmerSurvivesPanics(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(422))
	store := newPanickyStore("TrimDead", 1)
	core, logs := observer.New(zap.DebugLevel)
	s := settingsFor(t, up.URL)
	s.MaxDead = 1
	var dropped atomic.Int32
	e := Start(Config{Store: store, Settings: s, Logger: zap.New(core), PollInterval: 20 * time.Millisecond,
		DeadDropped: func(*queue.Entry) {
			if dropped.Add(1) == 1 {
				panic("injected panic in DeadDropped")
			}
		}})
	t.Cleanup(func() { e.Stop(time.Second) })
	for _, k := range []string{"a", "b", "c"} {
		admit(t, store.Memory, k, `{}`)
	}

	waitStats(t, store.Memory, func(st queue.Stats) bool { return st.Backlog == 0 && st.Dead == 1 && dropped.Load() == 2 })
	e.Stop(time.Second) // no trim runs while the logs are read
	testkit.PanicLogged(t, logs, "panic_test.go",
		testkit.Panic{Running: "the store's TrimDead", Value: "injected panic in TrimDead"},
		testkit.Panic{Running: "the dead-letter observer", Value: "injected panic in DeadDropped"})
	if n := logs.FilterMessageSnippet("dead letter removed").Len(); n != 2 {
		t.Errorf("%d dead letters logged as removed, want 2", n)
	}
}
