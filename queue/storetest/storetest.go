// Package storetest is the conformance suite of queue.Store. Every store
// runs it, so memory, bolt and redis keep exactly the same semantics and the
// relay can be tested against one and run against another.
//
// The suite sticks to the Store interface. What only some stores promise,
// such as surviving a restart, is tested next to those stores.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// Factory makes a fresh, empty store for one subtest. The store must use
// opts as given (Window, MaxBacklog, MaxStored, Evicted, Now). The factory arranges for the
// store to be closed when t ends; the suite may already have closed it.
type Factory func(t *testing.T, opts queue.Options) queue.Store

// Clock is a fake clock that only moves when told to, so window expiry is
// tested without sleeping. It is safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock set to a fixed time on a whole second, so that
// stores keeping only milliseconds see the same instants as the suite.
func NewClock() *Clock {
	return &Clock{now: time.Date(2025, time.March, 14, 15, 9, 26, 0, time.UTC)}
}

// Now returns the clock's time; pass it as queue.Options.Now.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// window is long enough that a store which also expires markers by real
// time (Redis TTLs) never does so while the suite runs.
const window = time.Hour

// Run runs the whole suite as subtests of t.
func Run(t *testing.T, newStore Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"AdmitThenDuplicate", testAdmitThenDuplicate},
		{"AdmitSetsIDAndTimes", testAdmitSetsIDAndTimes},
		{"DistinctKeysAccepted", testDistinctKeysAccepted},
		{"BacklogFull", testBacklogFull},
		{"AckMakesRoom", testAckMakesRoom},
		{"DeadLettersOutsideBacklog", testDeadLettersOutsideBacklog},
		{"WindowExpiry", testWindowExpiry},
		{"DuplicateAfterDelivery", testDuplicateAfterDelivery},
		{"ClaimOldestFirst", testClaimOldestFirst},
		{"ClaimAfterReleaseInTheMiddle", testClaimAfterReleaseInTheMiddle},
		{"ConcurrentClaimsDisjoint", testConcurrentClaimsDisjoint},
		{"IDsSortAsStrings", testIDsSortAsStrings},
		{"Release", testRelease},
		{"RetryReplacesAttempt", testRetryReplacesAttempt},
		{"RetryNotClaimableBeforeDue", testRetryNotClaimableBeforeDue},
		{"RetryDueOrder", testRetryDueOrder},
		{"RetryMergedWithNew", testRetryMergedWithNew},
		{"RetryKeepsAttempt", testRetryKeepsAttempt},
		{"RetryEndsTheClaim", testRetryEndsTheClaim},
		{"Ack", testAck},
		{"Bury", testBury},
		{"DeadPaging", testDeadPaging},
		{"DeleteDeadAndNotFound", testDeleteDeadAndNotFound},
		{"ReplayChosen", testReplayChosen},
		{"ReplayAll", testReplayAll},
		{"ReplayIgnoresMaxBacklog", testReplayIgnoresMaxBacklog},
		{"StatsOldestQueued", testStatsOldestQueued},
		{"RoundTrip", testRoundTrip},
		{"EntriesAreCopies", testEntriesAreCopies},
		{"ConcurrentSameKey", testConcurrentSameKey},
		{"ConcurrentBacklogBound", testConcurrentBacklogBound},
		{"SetLimits", testSetLimits},
		{"ClaimLeavesBodiesOut", testClaimLeavesBodiesOut},
		{"BuryRecordsDeath", testBuryRecordsDeath},
		{"TrimDeadByCount", testTrimDeadByCount},
		{"TrimDeadByAge", testTrimDeadByAge},
		{"KeysCounted", testKeysCounted},
		{"ReplayManyInSteps", testReplayManyInSteps},
		{"Closed", testClosed},
		{"StoredCounted", testStoredCounted},
		{"StoredEvictsOldestDead", testStoredEvictsOldestDead},
		{"StoredFullWithoutDead", testStoredFullWithoutDead},
		{"StoredDeleteFrees", testStoredDeleteFrees},
		{"AdmitKeepsNoBody", testAdmitKeepsNoBody},
		{"ReadBody", testReadBody},
		{"AdmitMarkerOnly", testAdmitMarkerOnly},
		{"PauseAndResume", testPauseAndResume},
		{"DestinationKept", testDestinationKept},
		{"TraceContextKept", testTraceContextKept},
		{"FanOutLanes", testFanOutLanes},
		{"FanOutBodyShared", testFanOutBodyShared},
		{"FanOutReplayToLane", testFanOutReplayToLane},
		{"FanOutLanesApart", testFanOutLanesApart},
		{"FanOutBacklogCountsDeliveries", testFanOutBacklogCountsDeliveries},
		{"FanOutTrimAndEvict", testFanOutTrimAndEvict},
		{"FanOutDuplicate", testFanOutDuplicate},
	}
	tests = append(tests, historyTests...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

// fixture is one subtest's store and clock, with helpers that fail the
// test on unexpected errors so the subtests read as the behaviour they check.
type fixture struct {
	t     *testing.T
	ctx   context.Context
	s     queue.Store
	clock *Clock
}

func setup(t *testing.T, newStore Factory, maxBacklog int) *fixture {
	t.Helper()
	clock := NewClock()
	s := newStore(t, queue.Options{Window: window, MaxBacklog: maxBacklog, Now: clock.Now})
	return &fixture{t: t, ctx: t.Context(), s: s, clock: clock}
}

// entry returns a new entry for key. Its times are left for Admit to set.
func (f *fixture) entry(key string) *queue.Entry {
	return &queue.Entry{
		Key:  key,
		Body: fmt.Appendf(nil, `{"taskUUID":%q,"at":%q}`, key, f.clock.Now().Format(time.RFC3339Nano)),
		Request: queue.RequestMeta{
			RawQuery:     "relay=test",
			ContentType:  "application/json",
			UserAgent:    "storetest",
			ForwardedFor: "192.0.2.1",
		},
	}
}

func (f *fixture) admit(e *queue.Entry) (queue.Admission, error) {
	f.t.Helper()
	return f.s.Admit(f.ctx, e)
}

func (f *fixture) wantAdmit(key string, want queue.Admission) *queue.Entry {
	f.t.Helper()
	e := f.entry(key)
	got, err := f.admit(e)
	if err != nil {
		f.t.Fatalf("Admit(%q): %v", key, err)
	}
	if got != want {
		f.t.Fatalf("Admit(%q) = %v, want %v", key, got, want)
	}
	if want == queue.Accepted {
		f.wantAdmitted(e)
	}
	return e
}

// wantAdmitted checks what Admit sets on an accepted entry.
func (f *fixture) wantAdmitted(e *queue.Entry) {
	f.t.Helper()
	if e.ID == "" {
		f.t.Fatalf("Admit(%q) accepted without setting the ID", e.Key)
	}
	now := f.clock.Now()
	if !e.Received.Equal(now) || !e.Queued.Equal(now) {
		f.t.Fatalf("Admit(%q) set Received %v and Queued %v, want both %v (the store's clock)",
			e.Key, e.Received, e.Queued, now)
	}
}

func (f *fixture) accept(key string) *queue.Entry {
	f.t.Helper()
	return f.wantAdmit(key, queue.Accepted)
}

func (f *fixture) wantFull(key string) {
	f.t.Helper()
	got, err := f.admit(f.entry(key))
	if !errors.Is(err, queue.ErrBacklogFull) {
		f.t.Fatalf("Admit(%q) = %v, %v; want ErrBacklogFull", key, got, err)
	}
}

func (f *fixture) claim(max int) []*queue.Entry {
	f.t.Helper()
	return f.claimFrom(f.s, max)
}

// claimFrom claims from c: the store, or one of its lanes.
func (f *fixture) claimFrom(c queue.Claimer, max int) []*queue.Entry {
	f.t.Helper()
	es, err := c.Claim(f.ctx, max)
	if err != nil {
		f.t.Fatalf("Claim(%d): %v", max, err)
	}
	if len(es) > max {
		f.t.Fatalf("Claim(%d) handed out %d entries", max, len(es))
	}
	// Claimed entries come without bodies; Body fetches them. The helpers
	// put the body back so that the subtests compare whole entries.
	for _, e := range es {
		if e.Body != nil {
			f.t.Fatalf("Claim handed out %s with its body; bodies are fetched with Body", e.ID)
		}
		body, err := c.Body(f.ctx, e.ID)
		if err != nil {
			f.t.Fatalf("Body(%s) of a claimed entry: %v", e.ID, err)
		}
		if len(body) != e.BodySize {
			f.t.Fatalf("Claim said %s has %d bytes; Body returned %d", e.ID, e.BodySize, len(body))
		}
		e.Body = body
	}
	return es
}

// wantClaim claims and checks that exactly the entries in want, in that
// order, were handed out.
func (f *fixture) wantClaim(max int, want ...*queue.Entry) []*queue.Entry {
	f.t.Helper()
	got := f.claim(max)
	if !slicesEqual(ids(got), ids(want)) {
		f.t.Fatalf("Claim(%d) = %v, want %v", max, ids(got), ids(want))
	}
	return got
}

func (f *fixture) ack(es ...*queue.Entry) {
	f.t.Helper()
	for _, e := range es {
		if err := f.s.Ack(f.ctx, e.ID); err != nil {
			f.t.Fatalf("Ack(%s): %v", e.ID, err)
		}
	}
}

func (f *fixture) bury(es ...*queue.Entry) {
	f.t.Helper()
	for _, e := range es {
		if err := f.s.Bury(f.ctx, e); err != nil {
			f.t.Fatalf("Bury(%s): %v", e.ID, err)
		}
	}
}

func (f *fixture) release(es ...*queue.Entry) {
	f.t.Helper()
	if err := f.s.Release(f.ctx, ids(es)); err != nil {
		f.t.Fatalf("Release(%v): %v", ids(es), err)
	}
}

func (f *fixture) replay(ids []string, want int) {
	f.t.Helper()
	n, err := f.s.Replay(f.ctx, ids)
	if err != nil {
		f.t.Fatalf("Replay(%v): %v", ids, err)
	}
	if n != want {
		f.t.Fatalf("Replay(%v) = %d, want %d", ids, n, want)
	}
}

func (f *fixture) dead(after string, limit int) []*queue.Entry {
	f.t.Helper()
	es, err := f.s.Dead(f.ctx, after, limit)
	if err != nil {
		f.t.Fatalf("Dead(%q, %d): %v", after, limit, err)
	}
	for _, e := range es {
		if e.Body != nil {
			f.t.Errorf("Dead listed %s with a body; listings carry none", e.ID)
		}
	}
	return es
}

func (f *fixture) deadEntry(id string) *queue.Entry {
	f.t.Helper()
	e, err := f.s.DeadEntry(f.ctx, id)
	if err != nil {
		f.t.Fatalf("DeadEntry(%s): %v", id, err)
	}
	return e
}

func (f *fixture) stats() queue.Stats {
	f.t.Helper()
	st, err := f.s.Stats(f.ctx)
	if err != nil {
		f.t.Fatalf("Stats: %v", err)
	}
	return st
}

func (f *fixture) wantCounts(backlog, dead int) {
	f.t.Helper()
	st := f.stats()
	if st.Backlog != backlog || st.Dead != dead {
		f.t.Fatalf("Stats: backlog %d, dead %d; want backlog %d, dead %d", st.Backlog, st.Dead, backlog, dead)
	}
}

func ids(es []*queue.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// sameEntry fails unless got carries what want was admitted with, apart from
// the delivery bookkeeping (Attempts, LastStatus, LastError, Queued).
func sameEntry(t *testing.T, got, want *queue.Entry, withBody bool) {
	t.Helper()
	if got.ID != want.ID {
		t.Errorf("ID = %q, want %q", got.ID, want.ID)
	}
	if got.Key != want.Key {
		t.Errorf("%s: Key = %q, want %q", want.ID, got.Key, want.Key)
	}
	if got.Destination != want.Destination {
		t.Errorf("%s: Destination = %q, want %q", want.ID, got.Destination, want.Destination)
	}
	if !reflect.DeepEqual(got.Request, want.Request) {
		t.Errorf("%s: Request = %+q, want %+q", want.ID, got.Request, want.Request)
	}
	if !got.Received.Equal(want.Received) {
		t.Errorf("%s: Received = %v, want %v", want.ID, got.Received, want.Received)
	}
	if withBody && !bytes.Equal(got.Body, want.Body) {
		t.Errorf("%s: Body differs: got %d bytes, want %d bytes", want.ID, len(got.Body), len(want.Body))
	}
}

func testAdmitThenDuplicate(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	first := f.accept("k")
	f.clock.Advance(time.Second)
	f.wantAdmit("k", queue.Duplicate) // a different body: the key alone decides
	f.wantCounts(1, 0)
	got := f.wantClaim(10, first)
	sameEntry(t, got[0], first, true)
}

func testAdmitSetsIDAndTimes(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	f.clock.Advance(90 * time.Minute)
	// whatever the caller put there, the store's clock decides
	e := f.entry("k")
	e.ID = "caller's"
	e.Received = time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	e.Queued = e.Received
	if got, err := f.admit(e); err != nil || got != queue.Accepted {
		t.Fatalf("Admit = %v, %v; want accepted", got, err)
	}
	f.wantAdmitted(e)
	if e.ID == "caller's" {
		t.Fatalf("Admit kept the caller's ID")
	}
	got := f.wantClaim(1, e)[0]
	sameEntry(t, got, e, true)
	if !got.Queued.Equal(e.Queued) {
		t.Errorf("Queued = %v, want %v", got.Queued, e.Queued)
	}
}

func testDistinctKeysAccepted(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	b := f.accept("b")
	if a.ID == b.ID {
		t.Fatalf("two entries got the same ID %q", a.ID)
	}
	f.wantCounts(2, 0)
}

func testBacklogFull(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 2)
	a := f.accept("a")
	b := f.accept("b")
	f.wantFull("c")
	f.wantCounts(2, 0)
	// a duplicate is answered as such even when full: its payload is stored
	f.wantAdmit("a", queue.Duplicate)
	// claimed entries are still queued, so still count
	f.wantClaim(10, a, b)
	f.wantFull("c")
	f.wantCounts(2, 0)
	// the refused key was not marked seen: the sender's retry gets in
	f.ack(a)
	f.accept("c")
}

// testSetLimits: a reload changes window and backlog bound of an open store.
func testSetLimits(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 1)
	f.accept("a")
	f.wantFull("b")
	f.s.SetLimits(window, 3)
	f.accept("b")
	f.accept("c")
	f.wantFull("d")

	// A shorter window applies to keys admitted from now on.
	f.s.SetLimits(time.Minute, 0)
	f.accept("short")
	f.clock.Advance(time.Minute + time.Nanosecond)
	f.accept("short")
	f.wantAdmit("a", queue.Duplicate) // admitted under the hour-long window
}

func testAckMakesRoom(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 1)
	a := f.accept("a")
	f.wantFull("b")
	f.wantClaim(1, a)
	f.ack(a)
	b := f.accept("b")
	f.wantFull("c")
	f.wantClaim(1, b)
}

func testDeadLettersOutsideBacklog(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 1)
	a := f.accept("a")
	f.wantClaim(1, a)
	f.bury(a)
	f.accept("b")
	f.wantCounts(1, 1)
	f.wantFull("c")
}

func testWindowExpiry(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	f.accept("k")
	f.clock.Advance(window - time.Second)
	f.wantAdmit("k", queue.Duplicate)
	// the duplicate above did not extend the window: it counts from admission
	f.clock.Advance(time.Second + time.Nanosecond)
	f.accept("k")
	f.wantAdmit("k", queue.Duplicate)
	f.wantCounts(2, 0)
}

func testDuplicateAfterDelivery(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	b := f.accept("b")
	f.wantClaim(2, a, b)
	f.ack(a)
	f.bury(b)
	if err := f.s.DeleteDead(f.ctx, b.ID); err != nil {
		t.Fatalf("DeleteDead: %v", err)
	}
	f.wantCounts(0, 0)
	// gone from the queue, still seen: the marker outlives the payload
	f.clock.Advance(window / 2)
	f.wantAdmit("a", queue.Duplicate)
	f.wantAdmit("b", queue.Duplicate)
	f.wantCounts(0, 0)
	f.clock.Advance(window/2 + time.Nanosecond)
	f.accept("a")
	f.accept("b")
}

func testClaimOldestFirst(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	f.clock.Advance(time.Millisecond)
	b := f.accept("b")
	f.clock.Advance(time.Millisecond)
	c := f.accept("c")

	f.wantClaim(2, a, b)
	f.wantClaim(2, c)
	f.wantClaim(2)
	if err := f.s.Extend(f.ctx, []string{a.ID, b.ID, c.ID}); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	f.wantClaim(2)
	f.wantCounts(3, 0)

	d := f.accept("d")
	f.wantClaim(2, d)
}

// testClaimAfterReleaseInTheMiddle claims in batches, then releases an entry
// behind others still held: the next claim must find it (stores may remember
// where the unclaimed part of the queue starts) and still hand out the
// oldest first, and a replayed dead letter is found too.
func testClaimAfterReleaseInTheMiddle(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	var es []*queue.Entry
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		es = append(es, f.accept(k))
		f.clock.Advance(time.Millisecond)
	}
	a, b, c, d, e := es[0], es[1], es[2], es[3], es[4]
	f.wantClaim(2, a, b)
	f.wantClaim(2, c, d)
	f.ack(a)
	f.release(c)
	f.wantClaim(10, c, e)
	f.wantClaim(10)

	g := f.accept("g")
	f.wantClaim(10, g)
	f.bury(b)
	f.replay([]string{b.ID}, 1)
	f.wantClaim(10, b)
	f.wantCounts(5, 0)

	// the replayed entry is acked like any other; the rest go back
	f.ack(b)
	f.wantCounts(4, 0)
	f.release(c, d, e, g)
	f.wantClaim(10, c, d, e, g)
	f.wantCounts(4, 0)
}

func testConcurrentClaimsDisjoint(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	const entries, workers = 60, 10
	for i := range entries {
		f.accept("k" + strconv.Itoa(i))
	}
	claimers := make([]queue.Claimer, workers)
	for i := range claimers {
		claimers[i] = f.s
	}
	ClaimsDisjoint(t, entries, 4, claimers...)
}

// ClaimsDisjoint has every claimer claim, all at once, batch entries at a
// time until the queue is empty, and checks that the want entries queued
// were handed out once each. The suite runs it with one store several
// times over; a shared store's own tests run it with several stores over
// the same data.
func ClaimsDisjoint(t *testing.T, want, batch int, claimers ...queue.Claimer) {
	t.Helper()
	var (
		mu      sync.Mutex
		claimed = make(map[string]int)
	)
	race(len(claimers), func(i int) {
		// bounded, so a store that hands entries out again fails instead
		// of spinning forever
		for range want {
			es, err := claimers[i].Claim(t.Context(), batch)
			if err != nil {
				t.Errorf("Claim: %v", err)
				return
			}
			if len(es) == 0 {
				return
			}
			mu.Lock()
			for _, e := range es {
				claimed[e.ID]++
			}
			mu.Unlock()
		}
	})

	if len(claimed) != want {
		t.Errorf("%d distinct entries claimed, want %d", len(claimed), want)
	}
	for id, n := range claimed {
		if n != 1 {
			t.Errorf("%s handed out %d times", id, n)
		}
	}
}

// testIDsSortAsStrings: ids sort as strings in admission order (Entry.ID),
// past 10 and 100, where a number printed without padding gets longer.
func testIDsSortAsStrings(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	prev := ""
	for i := range 150 {
		e := f.accept("k" + strconv.Itoa(i))
		if e.ID <= prev {
			t.Fatalf("id %q after %q does not sort after it", e.ID, prev)
		}
		prev = e.ID
	}
}

func testRelease(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	b := f.accept("b")
	f.wantClaim(10, a, b)

	f.release(a)
	got := f.wantClaim(10, a)
	sameEntry(t, got[0], a, true)
	if got[0].Attempts != 0 {
		t.Errorf("Attempts = %d after Release, want 0", got[0].Attempts)
	}

	f.release(a, b)
	got = f.claim(10)
	if len(got) != 2 || got[0].ID == got[1].ID ||
		(got[0].ID != a.ID && got[0].ID != b.ID) || (got[1].ID != a.ID && got[1].ID != b.ID) {
		t.Fatalf("Claim after releasing both = %v, want %s and %s", ids(got), a.ID, b.ID)
	}
	f.wantCounts(2, 0)
}

// A later Retry's attempt replaces the earlier one, a status of 0 (no
// response at all) included.
func testRetryReplacesAttempt(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	e := f.wantClaim(1, a)[0]

	e.Attempts, e.LastStatus, e.LastError = 1, 503, "upstream answered 503"
	f.retry(e, f.clock.Now())
	e = f.wantClaim(1, a)[0]
	e.Attempts, e.LastStatus, e.LastError = 2, 0, "dial tcp 192.0.2.9:443: connection refused"
	f.retry(e, f.clock.Now())

	got := f.wantClaim(1, a)[0]
	sameEntry(t, got, a, true)
	if got.Attempts != 2 || got.LastStatus != 0 || got.LastError != e.LastError {
		t.Errorf("after the second retry: Attempts %d, LastStatus %d, LastError %q; want 2, 0, %q",
			got.Attempts, got.LastStatus, got.LastError, e.LastError)
	}
}

func (f *fixture) retry(e *queue.Entry, due time.Time) {
	f.t.Helper()
	if err := f.s.Retry(f.ctx, e, due); err != nil {
		f.t.Fatalf("Retry(%s, %v): %v", e.ID, due, err)
	}
}

func (f *fixture) wantNextDue(want time.Time) {
	f.t.Helper()
	got, err := f.s.NextDue(f.ctx)
	if err != nil {
		f.t.Fatalf("NextDue: %v", err)
	}
	if !got.Equal(want) {
		f.t.Fatalf("NextDue = %v, want %v", got, want)
	}
}

// A retried entry is handed out again once it is due, not before; the
// others flow meanwhile.
func testRetryNotClaimableBeforeDue(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	e := f.wantClaim(1, a)[0]
	f.wantNextDue(time.Time{})
	due := f.clock.Now().Add(time.Minute)
	e.Attempts, e.LastStatus, e.LastError = 1, 500, "upstream answered 500"
	f.retry(e, due)
	f.wantNextDue(due)

	b := f.accept("b")
	f.wantClaim(10, b)
	f.clock.Advance(time.Minute - time.Second)
	f.wantClaim(10)
	f.wantCounts(2, 0)

	f.clock.Advance(time.Second)
	got := f.wantClaim(10, a)[0]
	sameEntry(t, got, a, true)
	f.wantNextDue(time.Time{}) // held now: nothing waits
	f.wantClaim(10)
}

// Due entries come out earliest due first, whatever order they were
// queued or retried in; an entry never attempted is due from when it was
// queued.
func testRetryDueOrder(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a, b, c := f.accept("a"), f.accept("b"), f.accept("c")
	claimed := f.wantClaim(10, a, b, c)
	now := f.clock.Now()
	f.retry(claimed[2], now.Add(1*time.Second))
	f.retry(claimed[0], now.Add(3*time.Second))
	f.retry(claimed[1], now.Add(2*time.Second))
	f.wantNextDue(now.Add(time.Second))

	f.clock.Advance(2 * time.Second)
	f.wantClaim(1, c)
	f.wantNextDue(now.Add(2 * time.Second)) // due already, not claimed yet
	f.clock.Advance(3 * time.Second)
	d := f.accept("d") // due now: after the three
	f.wantClaim(2, b, a)
	f.wantClaim(10, d)
}

// Retries and new entries come out in one due order: a new entry queued
// before a retry is due goes first, a retry due before a new entry was
// queued goes first, whether they are claimed one at a time or together.
// (A store that handed out every due retry before any new entry would let
// a steady stream of failing payloads starve the healthy ones.)
func testRetryMergedWithNew(t *testing.T, newStore Factory) {
	for _, batch := range []int{1, 10} {
		t.Run(fmt.Sprintf("claim%d", batch), func(t *testing.T) {
			f := setup(t, newStore, 0)
			t0 := f.clock.Now()
			claimed := f.wantClaim(10, f.accept("r1"), f.accept("r2"))
			r1, r2 := claimed[0], claimed[1]
			r1.Attempts, r2.Attempts = 1, 1
			f.retry(r1, t0.Add(2*time.Second))
			f.retry(r2, t0.Add(6*time.Second))
			f.clock.Advance(time.Second)
			n1 := f.accept("n1") // queued at t0+1s: before r1 is due
			f.clock.Advance(3 * time.Second)
			n2 := f.accept("n2") // queued at t0+4s: after r1, before r2 is due
			f.clock.Advance(4 * time.Second)
			want := []*queue.Entry{n1, r1, n2, r2}
			var got []*queue.Entry
			for len(got) < len(want) {
				es := f.claim(batch)
				if len(es) == 0 {
					break
				}
				got = append(got, es...)
			}
			if !slicesEqual(ids(got), ids(want)) {
				t.Fatalf("claimed %v (Claim(%d) until empty), want %v: n1 (queued t0+1s), r1 (due t0+2s), n2 (queued t0+4s), r2 (due t0+6s)",
					ids(got), batch, ids(want))
			}
			f.wantClaim(10)
		})
	}
}

// Attempts, last status and last error survive the wait, and the retried
// entry is delivered, buried or released like any claimed one.
func testRetryKeepsAttempt(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a, b := f.accept("a"), f.accept("b")
	es := f.wantClaim(10, a, b)
	es[0].Attempts, es[0].LastStatus, es[0].LastError = 3, 503, "upstream answered 503"
	es[1].Attempts, es[1].LastStatus, es[1].LastError = 1, 0, "dial tcp 192.0.2.9:443: connection refused"
	f.retry(es[0], f.clock.Now().Add(time.Second))
	f.retry(es[1], f.clock.Now().Add(time.Second))
	f.clock.Advance(time.Second)

	got := f.wantClaim(10, a, b)
	for i, want := range es {
		if got[i].Attempts != want.Attempts || got[i].LastStatus != want.LastStatus || got[i].LastError != want.LastError {
			t.Errorf("%s after the retry: Attempts %d, LastStatus %d, LastError %q; want %d, %d, %q", want.ID,
				got[i].Attempts, got[i].LastStatus, got[i].LastError, want.Attempts, want.LastStatus, want.LastError)
		}
	}
	f.release(got[0])
	again := f.wantClaim(10, a)[0]
	if again.Attempts != 3 {
		t.Errorf("Attempts = %d after a release, want 3", again.Attempts)
	}
	again.Attempts++
	f.bury(again)
	if d := f.deadEntry(a.ID); d.Attempts != 4 || d.LastStatus != 503 {
		t.Errorf("dead letter: Attempts %d, LastStatus %d; want 4, 503", d.Attempts, d.LastStatus)
	}
	f.ack(got[1])
	f.wantCounts(0, 1)
	f.wantNextDue(time.Time{})
	f.clock.Advance(time.Hour)
	f.wantClaim(10)
}

// Retry ends the claim: an entry no longer queued is ErrNotFound, and a
// retried entry is not the caller's to Retry again until it claims it.
func testRetryEndsTheClaim(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	e := f.wantClaim(1, a)[0]
	f.ack(e)
	if err := f.s.Retry(f.ctx, e, f.clock.Now()); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("Retry of an acked entry: %v, want ErrNotFound", err)
	}
	b := f.accept("b")
	e = f.wantClaim(1, b)[0]
	f.retry(e, f.clock.Now().Add(time.Minute))
	f.wantCounts(1, 0)
	if st := f.stats(); !st.OldestQueued.Equal(b.Queued) {
		t.Errorf("OldestQueued = %v with only a retry waiting, want its Queued %v", st.OldestQueued, b.Queued)
	}
}

// RetryHandover checks that retries outlive the process that gave them
// back: first admits x and y, claims both, gives x back due in a minute
// and still holds y when handover ends it (a restart: close and reopen; a
// takeover: first dies, another consumer takes over). The store handover
// returns must then hand out y (handover returns once the takeover is
// possible; RetryHandover claims until it gets y, for up to 30s), and x
// only once it is due, with its attempt.
func RetryHandover(t *testing.T, clock *Clock, first queue.Store, handover func() queue.Store) {
	t.Helper()
	f := &fixture{t: t, ctx: t.Context(), s: first, clock: clock}
	x, y := f.accept("x"), f.accept("y")
	es := f.wantClaim(10, x, y)
	es[0].Attempts, es[0].LastStatus, es[0].LastError = 2, 500, "upstream answered 500"
	due := clock.Now().Add(time.Minute)
	f.retry(es[0], due)

	f.s = handover()
	var got []*queue.Entry
	end := time.Now().Add(30 * time.Second)
	for len(got) == 0 && time.Now().Before(end) {
		if got = f.claim(10); len(got) == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if !slicesEqual(ids(got), []string{y.ID}) {
		t.Fatalf("after the handover: claimed %v, want the held %s only (%s is not due)", ids(got), y.ID, x.ID)
	}
	f.wantNextDue(due)
	clock.Advance(time.Minute - time.Second)
	f.wantClaim(10)
	clock.Advance(time.Second)
	back := f.wantClaim(10, x)[0]
	sameEntry(t, back, x, true)
	if back.Attempts != 2 || back.LastStatus != 500 || back.LastError != "upstream answered 500" {
		t.Errorf("after the handover: Attempts %d, LastStatus %d, LastError %q; want 2, 500, the reason",
			back.Attempts, back.LastStatus, back.LastError)
	}
}

func testAck(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	b := f.accept("b")
	f.wantClaim(2, a, b)
	f.ack(a)
	f.wantCounts(1, 0)
	f.release(b)
	f.wantClaim(10, b)
	f.ack(b)
	f.wantCounts(0, 0)
	f.wantClaim(10)
	if st := f.stats(); !st.OldestQueued.IsZero() {
		t.Errorf("OldestQueued = %v with an empty backlog, want zero", st.OldestQueued)
	}
}

func testBury(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	b := f.accept("b")
	c := f.accept("c")
	claimed := f.wantClaim(3, a, b, c)

	e := claimed[1]
	e.Attempts, e.LastStatus, e.LastError = 7, 422, "upstream answered 422: unknown task"
	f.bury(e)
	f.wantCounts(2, 1)

	listed := f.dead("", 10)
	if len(listed) != 1 {
		t.Fatalf("Dead listed %v, want [%s]", ids(listed), b.ID)
	}
	sameEntry(t, listed[0], b, false)
	if listed[0].Body != nil || listed[0].BodySize != len(b.Body) {
		t.Errorf("Dead listing: Body %q, BodySize %d; want no body and BodySize %d",
			listed[0].Body, listed[0].BodySize, len(b.Body))
	}
	d := f.deadEntry(b.ID)
	sameEntry(t, d, b, true)
	for _, got := range []*queue.Entry{listed[0], d} {
		if got.Attempts != 7 || got.LastStatus != 422 || got.LastError != e.LastError {
			t.Errorf("dead letter: Attempts %d, LastStatus %d, LastError %q; want 7, 422, %q",
				got.Attempts, got.LastStatus, got.LastError, e.LastError)
		}
	}

	// buried entries are out of the queue for good
	f.release(claimed[0], claimed[2])
	f.wantClaim(10, a, c)
}

func testDeadPaging(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	var admitted []*queue.Entry
	for i := range 5 {
		admitted = append(admitted, f.accept("k"+strconv.Itoa(i)))
		f.clock.Advance(time.Millisecond)
	}
	claimed := f.wantClaim(5, admitted...)
	// bury newest first: the listing follows ids, not burial order
	for i := len(claimed) - 1; i >= 0; i-- {
		f.bury(claimed[i])
	}

	all := f.dead("", 100)
	if want := ids(admitted); !slicesEqual(ids(all), want) {
		t.Fatalf("Dead = %v, want %v (id order)", ids(all), want)
	}
	var paged []string
	after := ""
	for range len(admitted) + 1 {
		page := f.dead(after, 2)
		if len(page) == 0 {
			break
		}
		if len(page) > 2 {
			t.Fatalf("Dead(%q, 2) returned %d entries", after, len(page))
		}
		paged = append(paged, ids(page)...)
		after = page[len(page)-1].ID
	}
	if !slicesEqual(paged, ids(all)) {
		t.Fatalf("pages of 2 = %v, want %v", paged, ids(all))
	}
	if got := f.dead(admitted[1].ID, 1); !slicesEqual(ids(got), ids(admitted[2:3])) {
		t.Fatalf("Dead(%s, 1) = %v, want %v", admitted[1].ID, ids(got), ids(admitted[2:3]))
	}
	if got := f.dead(admitted[4].ID, 10); len(got) != 0 {
		t.Fatalf("Dead after the last id = %v, want none", ids(got))
	}
}

func testDeleteDeadAndNotFound(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	queued := f.accept("b")
	f.wantClaim(1, a)
	f.bury(a)

	for _, id := range []string{"no-such-id", queued.ID} {
		if _, err := f.s.DeadEntry(f.ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Errorf("DeadEntry(%q) = %v, want ErrNotFound", id, err)
		}
		if err := f.s.DeleteDead(f.ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Errorf("DeleteDead(%q) = %v, want ErrNotFound", id, err)
		}
	}
	f.wantCounts(1, 1)

	if err := f.s.DeleteDead(f.ctx, a.ID); err != nil {
		t.Fatalf("DeleteDead(%s): %v", a.ID, err)
	}
	f.wantCounts(1, 0)
	if err := f.s.DeleteDead(f.ctx, a.ID); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("second DeleteDead(%s) = %v, want ErrNotFound", a.ID, err)
	}
	if _, err := f.s.DeadEntry(f.ctx, a.ID); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("DeadEntry(%s) after delete = %v, want ErrNotFound", a.ID, err)
	}
	if got := f.dead("", 10); len(got) != 0 {
		t.Errorf("Dead after delete = %v, want none", ids(got))
	}
}

// buryAll admits one entry per key, records a failed attempt on each and
// buries them all.
func (f *fixture) buryAll(keys ...string) []*queue.Entry {
	f.t.Helper()
	var admitted []*queue.Entry
	for _, k := range keys {
		admitted = append(admitted, f.accept(k))
	}
	claimed := f.wantClaim(len(keys), admitted...)
	for _, e := range claimed {
		e.Attempts, e.LastStatus, e.LastError = 3, 400, "upstream answered 400"
	}
	f.bury(claimed...)
	return admitted
}

// wantReplayed checks that got is want, put back in the queue at now with
// its delivery history wiped.
func wantReplayed(t *testing.T, got, want *queue.Entry, now time.Time) {
	t.Helper()
	sameEntry(t, got, want, true)
	if got.Attempts != 0 || got.LastStatus != 0 || got.LastError != "" {
		t.Errorf("replayed %s: Attempts %d, LastStatus %d, LastError %q; want all reset",
			got.ID, got.Attempts, got.LastStatus, got.LastError)
	}
	if !got.Queued.Equal(now) {
		t.Errorf("replayed %s: Queued = %v, want %v", got.ID, got.Queued, now)
	}
}

func testReplayChosen(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	dead := f.buryAll("a", "b", "c")
	f.clock.Advance(time.Minute)

	f.replay([]string{dead[0].ID, "no-such-id", dead[0].ID}, 1)
	f.wantCounts(1, 2)
	got := f.wantClaim(10, dead[0])
	wantReplayed(t, got[0], dead[0], f.clock.Now())
	if all := f.dead("", 10); !slicesEqual(ids(all), ids(dead[1:])) {
		t.Errorf("Dead after replay = %v, want %v", ids(all), ids(dead[1:]))
	}

	// an empty list is not nil: nothing goes back
	f.replay([]string{}, 0)
	f.wantCounts(1, 2)

	// replaying does not unmark the key
	f.wantAdmit("a", queue.Duplicate)
}

func testReplayAll(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	dead := f.buryAll("a", "b", "c")
	f.clock.Advance(time.Minute)

	f.replay(nil, 3)
	f.wantCounts(3, 0)
	if got := f.dead("", 10); len(got) != 0 {
		t.Errorf("Dead after replaying all = %v, want none", ids(got))
	}
	got := f.claim(10)
	if len(got) != 3 {
		t.Fatalf("Claim after replaying all = %v, want 3 entries", ids(got))
	}
	byID := make(map[string]*queue.Entry)
	for _, e := range dead {
		byID[e.ID] = e
	}
	for _, e := range got {
		want, ok := byID[e.ID]
		if !ok {
			t.Fatalf("Claim handed out %s, which was never buried", e.ID)
		}
		delete(byID, e.ID)
		wantReplayed(t, e, want, f.clock.Now())
	}
	f.replay(nil, 0)
}

func testReplayIgnoresMaxBacklog(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 1)
	f.buryAll("a")
	f.accept("b")
	f.wantFull("c")
	// the operator asked for it: a full backlog does not keep letters dead
	f.replay(nil, 1)
	f.wantCounts(2, 0)
	f.wantFull("c")
}

func testStatsOldestQueued(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	wantOldest := func(want time.Time) {
		t.Helper()
		if got := f.stats().OldestQueued; !got.Equal(want) {
			t.Fatalf("OldestQueued = %v, want %v", got, want)
		}
	}
	wantOldest(time.Time{})

	a := f.accept("a")
	f.clock.Advance(time.Second)
	b := f.accept("b")
	f.clock.Advance(time.Second)
	wantOldest(a.Queued)

	f.wantClaim(1, a)
	wantOldest(a.Queued) // claimed is still queued
	f.ack(a)
	wantOldest(b.Queued)

	f.wantClaim(1, b)
	f.bury(b)
	wantOldest(time.Time{}) // dead letters are not queued

	f.clock.Advance(time.Second)
	f.replay(nil, 1)
	wantOldest(f.clock.Now())
}

func testRoundTrip(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)

	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>8)
	}
	odd := queue.RequestMeta{
		RawQuery:     "a=1&b=%FF%00&c=caf%C3%A9&a=2",
		ContentType:  "application/json; charset=utf-8",
		UserAgent:    "Runware/1.0 (\xff\xfeobs-text\x80)",
		ForwardedFor: "203.0.113.7, 2001:db8::1",
		Headers: []queue.HeaderField{
			{Name: "Stripe-Signature", Value: "t=1,v1=ab,v1=cd"},
			{Name: "X-Github-Event", Value: "push"}, {Name: "X-Github-Event", Value: "second value"},
			{Name: "X-Empty", Value: ""}, {Name: "X-Bytes", Value: "\xff\x00ü"},
		},
	}
	entries := []*queue.Entry{
		// keys come from query strings and headers too: any bytes at all
		{Key: "task:ü\xff\x00{relay}:*?[x] \"quoted\"", Destination: "archive ü\xff", Body: every, Request: odd},
		{Key: "1MiB", Body: big},
		{Key: "empty", Body: []byte{}},
		{Key: "invalid utf-8 body", Body: []byte("{\"v\":\"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x90\x28\xbc\"}")},
	}
	admitted := make([]*queue.Entry, len(entries))
	for i, e := range entries {
		// the store gets its own copy: admit a clone and keep the original
		c := *e
		c.Body = bytes.Clone(e.Body)
		if got, err := f.admit(&c); err != nil || got != queue.Accepted {
			t.Fatalf("Admit(%q) = %v, %v", e.Key, got, err)
		}
		f.wantAdmitted(&c)
		e.ID, e.Received, e.Queued = c.ID, c.Received, c.Queued
		admitted[i] = e
		f.clock.Advance(time.Second) // distinct times per entry
	}

	// the first waits in its destination's lane, the others in the store's
	lane := f.s.Lane(entries[0].Destination)
	claimed := append(f.claimFrom(lane, 1), f.claim(len(entries))...)
	if len(claimed) != len(entries) {
		t.Fatalf("Claim = %v, want %d entries", ids(claimed), len(entries))
	}
	byID := make(map[string]*queue.Entry)
	for _, e := range claimed {
		byID[e.ID] = e
	}
	for _, want := range admitted {
		got, ok := byID[want.ID]
		if !ok {
			t.Fatalf("Claim did not hand out %s", want.ID)
		}
		sameEntry(t, got, want, true)
		if !got.Queued.Equal(want.Queued) {
			t.Errorf("%s: Queued = %v, want %v", want.ID, got.Queued, want.Queued)
		}
	}

	f.buryIn(lane, claimed[0])
	f.bury(claimed[1:]...)
	listed := f.dead("", 10)
	if len(listed) != len(entries) {
		t.Fatalf("Dead = %v, want %d entries", ids(listed), len(entries))
	}
	for _, got := range listed {
		sameEntry(t, got, byID[got.ID], false)
	}
	for _, want := range admitted {
		sameEntry(t, f.deadEntry(want.ID), want, true)
	}

	// and back from the dead: a replay keeps what the request kept
	f.replay([]string{admitted[0].ID}, 1)
	back := f.claimFrom(lane, 1)
	if len(back) != 1 || back[0].ID != admitted[0].ID {
		t.Fatalf("Claim after Replay = %v, want %s", ids(back), admitted[0].ID)
	}
	if !reflect.DeepEqual(back[0].Request, admitted[0].Request) {
		t.Errorf("replayed: Request = %+q, want %+q", back[0].Request, admitted[0].Request)
	}
	if back[0].Destination != admitted[0].Destination {
		t.Errorf("replayed: Destination = %q, want %q", back[0].Destination, admitted[0].Destination)
	}
}

// testDestinationKept: the destination an entry was admitted for stays
// with it through Claim, its dead letter (listed, shown, trimmed) and a
// replay; an entry admitted without one has none.
func testDestinationKept(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	archive := f.s.Lane("archive")
	a := f.entry("a")
	a.Destination = "archive"
	if got, err := f.admit(a); err != nil || got != queue.Accepted {
		t.Fatalf("Admit(a) = %v, %v", got, err)
	}
	b := f.accept("b") // no destination

	// each waits in its own lane
	claimedA := f.wantClaimFrom(archive, 2, a)
	claimedB := f.wantClaim(2, b)
	if claimedA[0].Destination != "archive" || claimedB[0].Destination != "" {
		t.Fatalf("Claim: destinations %q and %q, want %q and none",
			claimedA[0].Destination, claimedB[0].Destination, "archive")
	}
	f.clock.Advance(time.Second)
	f.buryIn(archive, claimedA...)
	f.bury(claimedB...)
	listed := f.dead("", 10)
	if len(listed) != 2 || listed[0].Destination != "archive" || listed[1].Destination != "" {
		t.Fatalf("Dead = %+v, want a (destination archive) and b (none)", listed)
	}
	if got := f.deadEntry(a.ID).Destination; got != "archive" {
		t.Errorf("DeadEntry(a).Destination = %q, want %q", got, "archive")
	}

	// a replayed entry is still for its destination, in its lane, and so
	// is its next dead letter
	f.replay([]string{a.ID}, 1)
	f.wantClaim(1)
	back := f.wantClaimFrom(archive, 1, a)
	if back[0].Destination != "archive" {
		t.Errorf("replayed entry: Destination = %q, want %q", back[0].Destination, "archive")
	}
	f.clock.Advance(time.Second)
	f.buryIn(archive, back...)
	gone, err := f.s.TrimDead(f.ctx, 0, f.clock.Now().Add(time.Nanosecond), 10)
	if err != nil {
		t.Fatalf("TrimDead: %v", err)
	}
	dest := make(map[string]string)
	for _, e := range gone {
		dest[e.ID] = e.Destination
	}
	if len(gone) != 2 || dest[a.ID] != "archive" || dest[b.ID] != "" {
		t.Errorf("TrimDead returned %v, want a (destination archive) and b (none)", dest)
	}
}

// testTraceContextKept: the trace context an entry was admitted with stays
// with it through Claim, its dead letter (listed and shown) and a replay;
// an entry admitted without one has none.
func testTraceContextKept(t *testing.T, newStore Factory) {
	const (
		parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		state  = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
	)
	f := setup(t, newStore, 0)
	a := f.entry("a")
	a.Request.TraceParent, a.Request.TraceState = parent, state
	if got, err := f.admit(a); err != nil || got != queue.Accepted {
		t.Fatalf("Admit(a) = %v, %v", got, err)
	}
	b := f.accept("b") // no trace context

	want := func(stage string, e *queue.Entry, p, s string) {
		t.Helper()
		if e.Request.TraceParent != p || e.Request.TraceState != s {
			t.Errorf("%s: %s: trace context %q, %q; want %q, %q", stage, e.ID,
				e.Request.TraceParent, e.Request.TraceState, p, s)
		}
	}
	claimed := f.wantClaim(2, a, b)
	want("Claim", claimed[0], parent, state)
	want("Claim", claimed[1], "", "")
	f.clock.Advance(time.Second)
	f.bury(claimed...)
	listed := f.dead("", 10)
	if len(listed) != 2 {
		t.Fatalf("Dead: %d letters, want 2", len(listed))
	}
	want("Dead", listed[0], parent, state)
	want("Dead", listed[1], "", "")
	want("DeadEntry", f.deadEntry(a.ID), parent, state)

	f.replay([]string{a.ID}, 1)
	back := f.wantClaim(1, a)
	want("Claim after replay", back[0], parent, state)
}

func testEntriesAreCopies(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	e := f.entry("k")
	want := *e
	want.Body = bytes.Clone(e.Body)
	if got, err := f.admit(e); err != nil || got != queue.Accepted {
		t.Fatalf("Admit = %v, %v; want accepted", got, err)
	}
	want.ID, want.Received, want.Queued = e.ID, e.Received, e.Queued

	// the caller may reuse what it admitted, body buffer included
	e.Key = "changed"
	e.Body[0] = 'X'
	e.Request.UserAgent = "changed"

	got := f.wantClaim(1, &want)[0]
	sameEntry(t, got, &want, true)

	// and may scribble on what it got back, except the body
	got.Key, got.Attempts, got.Request.RawQuery = "changed", 99, "changed"
	f.release(got)
	got = f.wantClaim(1, &want)[0]
	sameEntry(t, got, &want, true)
	if got.Attempts != 0 {
		t.Errorf("Attempts = %d, want 0: a returned entry was not a copy", got.Attempts)
	}

	f.bury(got)
	listed := f.dead("", 1)[0]
	listed.Key, listed.Attempts = "changed", 99
	d := f.deadEntry(want.ID)
	d.Key, d.Attempts = "changed", 99
	sameEntry(t, f.dead("", 1)[0], &want, false)
	sameEntry(t, f.deadEntry(want.ID), &want, true)
	if got := f.deadEntry(want.ID); got.Attempts != 0 {
		t.Errorf("dead Attempts = %d, want 0: a returned entry was not a copy", got.Attempts)
	}
}

// race starts n goroutines at once and waits for them.
func race(n int, fn func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			fn(i)
		})
	}
	close(start)
	wg.Wait()
}

func testConcurrentSameKey(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	const n = 50
	var accepted, duplicate atomic.Int32
	race(n, func(i int) {
		got, err := f.s.Admit(f.ctx, f.entry("same"))
		switch {
		case err != nil:
			t.Errorf("Admit #%d: %v", i, err)
		case got == queue.Accepted:
			accepted.Add(1)
		case got == queue.Duplicate:
			duplicate.Add(1)
		}
	})
	if accepted.Load() != 1 || duplicate.Load() != n-1 {
		t.Fatalf("%d accepted, %d duplicates; want 1 and %d", accepted.Load(), duplicate.Load(), n-1)
	}
	f.wantCounts(1, 0)
}

func testConcurrentBacklogBound(t *testing.T, newStore Factory) {
	const n, bound = 50, 10
	f := setup(t, newStore, bound)
	var accepted, full atomic.Int32
	race(n, func(i int) {
		got, err := f.s.Admit(f.ctx, f.entry("k"+strconv.Itoa(i)))
		switch {
		case errors.Is(err, queue.ErrBacklogFull):
			full.Add(1)
		case err != nil:
			t.Errorf("Admit #%d: %v", i, err)
		case got == queue.Accepted:
			accepted.Add(1)
		default:
			t.Errorf("Admit #%d = %v, want accepted or full", i, got)
		}
	})
	if accepted.Load() != bound || full.Load() != n-bound {
		t.Fatalf("%d accepted, %d refused; want %d and %d", accepted.Load(), full.Load(), bound, n-bound)
	}
	f.wantCounts(bound, 0)
}

func testClosed(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	b := f.accept("b")
	f.wantClaim(1, a)
	f.bury(a)
	f.wantClaim(1, b)

	if err := f.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	ctx := f.ctx
	calls := []struct {
		name string
		call func() error
	}{
		{"Admit", func() error { _, err := f.s.Admit(ctx, f.entry("c")); return err }},
		{"Claim", func() error { _, err := f.s.Claim(ctx, 1); return err }},
		{"Extend", func() error { return f.s.Extend(ctx, []string{b.ID}) }},
		{"Retry", func() error { return f.s.Retry(ctx, b, f.clock.Now()) }},
		{"Ack", func() error { return f.s.Ack(ctx, b.ID) }},
		{"Bury", func() error { return f.s.Bury(ctx, b) }},
		{"Release", func() error { return f.s.Release(ctx, []string{b.ID}) }},
		{"Dead", func() error { _, err := f.s.Dead(ctx, "", 10); return err }},
		{"DeadEntry", func() error { _, err := f.s.DeadEntry(ctx, a.ID); return err }},
		{"DeleteDead", func() error { return f.s.DeleteDead(ctx, a.ID) }},
		{"Replay", func() error { _, err := f.s.Replay(ctx, nil); return err }},
		{"Stats", func() error { _, err := f.s.Stats(ctx); return err }},
		{"SetPaused", func() error { return f.s.SetPaused(ctx, "upstream", true) }},
		{"Paused", func() error { _, err := f.s.Paused(ctx); return err }},
	}
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, queue.ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", c.name, err)
		}
	}
}

func testClaimLeavesBodiesOut(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	b := f.accept("b")
	got, err := f.s.Claim(f.ctx, 2)
	if err != nil || len(got) != 2 {
		t.Fatalf("Claim(2) = %v, %v; want 2 entries", ids(got), err)
	}
	for i, want := range []*queue.Entry{a, b} {
		if got[i].Body != nil || got[i].BodySize != len(want.Body) {
			t.Errorf("claimed %s: Body %d bytes, BodySize %d; want no body and BodySize %d",
				want.ID, len(got[i].Body), got[i].BodySize, len(want.Body))
		}
	}
	body, err := f.s.Body(f.ctx, a.ID)
	if err != nil || !bytes.Equal(body, a.Body) {
		t.Fatalf("Body(%s) = %q, %v; want %q", a.ID, body, err, a.Body)
	}
	body[0] = 'X' // the caller owns it
	if again, _ := f.s.Body(f.ctx, a.ID); !bytes.Equal(again, a.Body) {
		t.Fatalf("Body(%s) after the caller changed its copy = %q, want %q", a.ID, again, a.Body)
	}

	f.ack(got[0])
	f.bury(got[1])
	for _, id := range []string{a.ID, b.ID, "no-such-id"} {
		if _, err := f.s.Body(f.ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Errorf("Body(%s) of an entry that is not queued = %v, want ErrNotFound", id, err)
		}
	}
}

func testBuryRecordsDeath(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	a := f.accept("a")
	f.wantClaim(1, a)
	f.clock.Advance(time.Minute)
	f.bury(a)
	died := f.clock.Now()
	if got := f.dead("", 1)[0].Died; !got.Equal(died) {
		t.Errorf("listed Died = %v, want %v (the store's clock at Bury)", got, died)
	}
	if got := f.deadEntry(a.ID).Died; !got.Equal(died) {
		t.Errorf("DeadEntry Died = %v, want %v", got, died)
	}
	f.replay(nil, 1)
	got := f.wantClaim(1, a)[0]
	if !got.Died.IsZero() {
		t.Errorf("replayed entry has Died %v, want zero", got.Died)
	}
}

// buryAt buries one accepted entry per key, a minute apart on the clock, in
// the order given.
func (f *fixture) buryAt(keys ...string) map[string]*queue.Entry {
	f.t.Helper()
	admitted := make(map[string]*queue.Entry)
	for _, k := range keys {
		admitted[k] = f.accept(k)
	}
	claimed := f.claim(len(keys))
	byKey := make(map[string]*queue.Entry)
	for _, e := range claimed {
		byKey[e.Key] = e
	}
	for _, k := range keys {
		f.clock.Advance(time.Minute)
		f.bury(byKey[k])
	}
	return admitted
}

func (f *fixture) trim(max int, cutoff time.Time, limit int) []string {
	f.t.Helper()
	gone, err := f.s.TrimDead(f.ctx, max, cutoff, limit)
	if err != nil {
		f.t.Fatalf("TrimDead(%d, %v, %d): %v", max, cutoff, limit, err)
	}
	keys := make([]string, len(gone))
	for i, e := range gone {
		if e.Body != nil {
			f.t.Errorf("TrimDead returned %s with its body", e.ID)
		}
		keys[i] = e.Key
	}
	return keys
}

func testTrimDeadByCount(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	// buried in an order other than id order: the oldest death goes first
	admitted := f.buryAt("c", "a", "e", "b", "d")
	if got := f.trim(0, time.Time{}, 10); len(got) != 0 {
		t.Fatalf("TrimDead with no bounds removed %v", got)
	}
	if got := f.trim(5, time.Time{}, 10); len(got) != 0 {
		t.Fatalf("TrimDead(max 5) of 5 letters removed %v", got)
	}
	if got := f.trim(3, time.Time{}, 1); !slicesEqual(got, []string{"c"}) {
		t.Fatalf("TrimDead(max 3, limit 1) removed %v, want [c]", got)
	}
	if got := f.trim(3, time.Time{}, 10); !slicesEqual(got, []string{"a"}) {
		t.Fatalf("TrimDead(max 3) removed %v, want [a]", got)
	}
	f.wantCounts(0, 3)
	for _, k := range []string{"c", "a"} {
		if _, err := f.s.DeadEntry(f.ctx, admitted[k].ID); !errors.Is(err, queue.ErrNotFound) {
			t.Errorf("DeadEntry of trimmed %s = %v, want ErrNotFound", k, err)
		}
	}
	var left []string
	for _, e := range f.dead("", 10) {
		left = append(left, e.Key)
	}
	if !slicesEqual(left, []string{"e", "b", "d"}) {
		t.Errorf("dead letters left %v, want [e b d] (id order)", left)
	}
	if got := f.deadEntry(admitted["b"].ID); !bytes.Equal(got.Body, admitted["b"].Body) {
		t.Errorf("a kept dead letter lost its body")
	}
}

func testTrimDeadByAge(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	f.buryAt("a", "b", "c") // died at +1m, +2m, +3m
	start := f.clock.Now().Add(-3 * time.Minute)
	if got := f.trim(0, start.Add(time.Minute), 10); len(got) != 0 {
		t.Fatalf("TrimDead(cutoff at the first death) removed %v, want none: the cutoff is exclusive", got)
	}
	if got := f.trim(0, start.Add(150*time.Second), 10); !slicesEqual(got, []string{"a", "b"}) {
		t.Fatalf("TrimDead(cutoff +2m30s) removed %v, want [a b]", got)
	}
	// both bounds: age first, then count
	f.buryAt("d", "e")
	if got := f.trim(1, start.Add(150*time.Second), 10); !slicesEqual(got, []string{"c", "d"}) {
		t.Fatalf("TrimDead(max 1, cutoff +2m30s) removed %v, want [c d]", got)
	}
	f.wantCounts(0, 1)
}

func testKeysCounted(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	if got := f.stats().Keys; got != 0 {
		t.Fatalf("Keys of an empty store = %d, want 0", got)
	}
	a := f.accept("a")
	f.accept("b")
	f.accept("c")
	f.wantAdmit("a", queue.Duplicate)
	if got := f.stats().Keys; got != 3 {
		t.Fatalf("Keys after 3 accepted keys and a duplicate = %d, want 3", got)
	}
	// delivering a payload keeps its marker for the window
	f.ack(f.wantClaim(1, a)...)
	if got := f.stats().Keys; got != 3 {
		t.Fatalf("Keys after a delivery = %d, want 3", got)
	}
}

func testReplayManyInSteps(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	const n = 600 // more than one step of every store
	for i := range n {
		f.accept("k" + strconv.Itoa(i))
	}
	for {
		es, err := f.s.Claim(f.ctx, 200)
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if err := f.s.Bury(f.ctx, e); err != nil {
				t.Fatalf("Bury(%s): %v", e.ID, err)
			}
		}
	}
	f.wantCounts(0, n)
	f.replay(nil, n)
	f.wantCounts(n, 0)
}

// The benchmarks every store runs, so that their numbers compare.

// Bench measures Admit of unique keys with a typical webhook body from many
// goroutines at once, the relay's hot path, and reports admits/s. Every
// store runs it so their numbers compare.
func Bench(b *testing.B, newStore func(b *testing.B) queue.Store) {
	s := newStore(b)
	ctx := b.Context()
	// a Runware image result, about 300 bytes
	body := []byte(`{"data":[{"taskType":"imageInference","taskUUID":"a770f077-f413-47de-9dac-be0b26a35da6",` +
		`"imageUUID":"77da2d99-a6d3-44d9-b8c0-ae9fb06b6200","imageURL":"https://im.runware.ai/image/ws/0.5/ii/` +
		`77da2d99-a6d3-44d9-b8c0-ae9fb06b6200.jpg","seed":1234567890,"NSFWContent":false,"cost":0.0013}]}`)
	meta := queue.RequestMeta{ContentType: "application/json", UserAgent: "Runware", ForwardedFor: "192.0.2.1"}

	var n atomic.Uint64
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e := &queue.Entry{
				Key:     "a770f077-f413-47de-9dac-be0b26a35da6:" + strconv.FormatUint(n.Add(1), 10),
				Body:    body,
				Request: meta,
			}
			got, err := s.Admit(ctx, e)
			if err != nil || got != queue.Accepted {
				b.Errorf("Admit = %v, %v; want accepted", got, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "admits/s")
}

// BenchConcurrency runs Bench at 1, 16 and 64 concurrent admits and reports
// the admit (ack) latency p99 with the throughput. RunParallel starts
// parallelism×GOMAXPROCS goroutines: run with -cpu 1 for exactly that many,
// e.g.
//
//	go test -run '^$' -bench BenchmarkAdmit -cpu 1 ./queue/...
func BenchConcurrency(b *testing.B, newStore func(b *testing.B) queue.Store) {
	for _, conc := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			b.SetParallelism(conc)
			var h latencies
			Bench(b, func(b *testing.B) queue.Store {
				return timedStore{Store: newStore(b), h: &h}
			})
			b.ReportMetric(float64(h.quantile(0.99).Microseconds()), "p99-µs")
		})
	}
}

// timedStore records how long each Admit takes.
type timedStore struct {
	queue.Store
	h *latencies
}

func (s timedStore) Admit(ctx context.Context, e *queue.Entry) (queue.Admission, error) {
	start := time.Now()
	a, err := s.Store.Admit(ctx, e)
	s.h.add(time.Since(start))
	return a, err
}

// latencies is a lock-free histogram with four buckets per power of two
// (about 19% resolution), cheap enough not to disturb what it measures.
type latencies struct{ n [64 * 4]atomic.Int64 }

func (h *latencies) add(d time.Duration) {
	h.n[bucketOf(uint64(max(d, 1)))].Add(1)
}

func bucketOf(ns uint64) int {
	exp := bits.Len64(ns) - 1
	if exp < 2 {
		return int(ns)
	}
	return exp*4 + int(ns>>(exp-2)&3)
}

// quantile returns the upper bound of the bucket holding the q quantile.
func (h *latencies) quantile(q float64) time.Duration {
	var total int64
	for i := range h.n {
		total += h.n[i].Load()
	}
	want := int64(q * float64(total))
	var seen int64
	for i := range h.n {
		seen += h.n[i].Load()
		if seen > want || (seen == total && total > 0) {
			exp, sub := i/4, i%4
			if exp < 2 {
				return time.Duration(i + 1)
			}
			return time.Duration((uint64(4+sub+1) << (exp - 2)))
		}
	}
	return 0
}

// TestBoltDamagedEntryDoesNotHaltClaims: a queued record that cannot be
// decoded comes back from Claim marked Damaged, the entries after it still
// come, and burying it keeps the reason and the body.

// MarkerCount is how many markers FillMarkers leaves: enough
// that per-structure overhead is spread thin.
const MarkerCount = 5000

// RunwareKey is a dedupe key of the shape the runware source makes: task
// UUID and output UUID.
func RunwareKey(i int) string {
	return fmt.Sprintf("rw:%08x-1111-4222-8333-%012x/%08x-aaaa-4bbb-8ccc-%012x", i, i, i, i)
}

// FillMarkers admits MarkerCount payloads, 32 at a time so that bolt's
// commits are shared, and delivers them, so that only their markers stay.
func FillMarkers(b *testing.B, s queue.Store) {
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := w; i < MarkerCount; i += 32 {
				e := &queue.Entry{Key: RunwareKey(i), Body: []byte(`{}`)}
				if a, err := s.Admit(ctx, e); err != nil || a != queue.Accepted {
					b.Errorf("Admit: %v %v", a, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	for {
		es, err := s.Claim(ctx, 1000)
		if err != nil {
			b.Fatal(err)
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if err := s.Ack(ctx, e.ID); err != nil {
				b.Fatal(err)
			}
		}
	}
	st, err := s.Stats(ctx)
	if err != nil || st.Keys != MarkerCount || st.Backlog != 0 {
		b.Fatalf("Stats = %+v, %v; want %d keys and an empty backlog", st, err, MarkerCount)
	}
}

// testAdmitMarkerOnly: an entry admitted MarkerOnly (no destination takes
// it) marks its key seen and stores nothing: a second admit of the key is a
// duplicate, nothing is claimable, nothing counts as backlog or stored
// bytes, and a full backlog or store does not refuse it.
func testAdmitMarkerOnly(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 1)
	mark := func(key string) queue.Admission {
		t.Helper()
		e := f.entry(key)
		e.MarkerOnly = true
		got, err := f.admit(e)
		if err != nil {
			t.Fatalf("Admit(%q, marker only): %v", key, err)
		}
		if e.ID != "" {
			t.Fatalf("Admit(%q, marker only) set the ID %q: nothing was stored", key, e.ID)
		}
		return got
	}
	if got := mark("ignored"); got != queue.Accepted {
		t.Fatalf("Admit(marker only) = %v, want Accepted", got)
	}
	f.wantAdmit("ignored", queue.Duplicate)
	if got := mark("ignored"); got != queue.Duplicate {
		t.Fatalf("Admit(marker only) of a seen key = %v, want Duplicate", got)
	}
	f.wantCounts(0, 0)
	f.wantStored(0)
	if got := f.stats().Keys; got != 1 {
		t.Fatalf("Keys after a marker = %d, want 1", got)
	}
	f.wantClaim(10)
	// the backlog (1) full: a marker still goes in, a payload does not
	a := f.accept("queued")
	if got := mark("ignored-too"); got != queue.Accepted {
		t.Fatalf("Admit(marker only) with the backlog full = %v, want Accepted", got)
	}
	f.wantFull("another")
	f.wantCounts(1, 0)
	f.ack(f.wantClaim(10, a)...)
	// the window over, the key is new again
	f.clock.Advance(window + time.Second)
	f.accept("ignored")
}
