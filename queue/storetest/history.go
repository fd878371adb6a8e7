package storetest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// History: the record a store keeps of each payload, its attempts and its
// body, until History after the payload is done.

const history = 24 * time.Hour

// HistoryTests are the history subtests; Run runs them too.
var historyTests = []struct {
	name string
	fn   func(*testing.T, Factory)
}{
	{"HistoryRecordKept", testHistoryRecordKept},
	{"HistoryAttempts", testHistoryAttempts},
	{"HistoryTrimmed", testHistoryTrimmed},
	{"HistoryAttemptsCapped", testHistoryAttemptsCapped},
	{"HistoryDeadAndReplay", testHistoryDeadAndReplay},
	{"HistoryResend", testHistoryResend},
	{"HistoryGivesWayFirst", testHistoryGivesWayFirst},
	{"HistoryPagingAndSearch", testHistoryPagingAndSearch},
	{"HistoryOff", testHistoryOff},
}

func setupHistory(t *testing.T, newStore Factory, maxStored int64) *storedFixture {
	t.Helper()
	clock := NewClock()
	sf := &storedFixture{}
	s := newStore(t, queue.Options{Window: window, MaxStored: maxStored, History: history, Now: clock.Now,
		Evicted: func(n int) { sf.evicted.Add(int64(n)) }})
	sf.fixture = &fixture{t: t, ctx: t.Context(), s: s, clock: clock}
	return sf
}

func (f *fixture) event(id string) *queue.Record {
	f.t.Helper()
	r, err := f.s.Event(f.ctx, id)
	if err != nil {
		f.t.Fatalf("Event(%s): %v", id, err)
	}
	return r
}

func (f *fixture) wantNoEvent(id string) {
	f.t.Helper()
	if r, err := f.s.Event(f.ctx, id); !errors.Is(err, queue.ErrNotFound) {
		f.t.Fatalf("Event(%s) = %+v, %v; want ErrNotFound", id, r, err)
	}
}

func (f *fixture) events(q queue.EventQuery) ([]*queue.Record, string) {
	f.t.Helper()
	rs, next, err := f.s.Events(f.ctx, q)
	if err != nil {
		f.t.Fatalf("Events(%+v): %v", q, err)
	}
	if len(rs) > q.Limit {
		f.t.Fatalf("Events(%+v): %d records, over the limit", q, len(rs))
	}
	return rs, next
}

// attempted records an attempt of e (claimed from lane) that ended in
// state, with status, at the clock's now.
func (f *fixture) attempted(lane queue.Claimer, e *queue.Entry, status int, state, errText string) queue.Attempt {
	f.t.Helper()
	rec, ok := lane.(queue.Recorder)
	if !ok {
		f.t.Fatalf("the lane %T keeps no records (queue.Recorder)", lane)
	}
	a := queue.Attempt{Destination: e.Destination, At: f.clock.Now(), Status: status, DurationMS: 42, Error: errText}
	if err := rec.Attempted(f.ctx, e, a, state); err != nil {
		f.t.Fatalf("Attempted(%s): %v", e.ID, err)
	}
	return a
}

func recordStates(r *queue.Record) string {
	var b strings.Builder
	b.WriteString(r.State)
	for _, d := range r.Destinations {
		fmt.Fprintf(&b, " %s=%s/%d", d.Destination, d.State, d.Attempts)
	}
	return b.String()
}

func (f *fixture) wantRecord(id, want string) *queue.Record {
	f.t.Helper()
	r := f.event(id)
	if got := recordStates(r); got != want {
		f.t.Fatalf("record %s: %s, want %s", id, got, want)
	}
	return r
}

// testHistoryRecordKept: an accepted payload has a record at once, every
// destination queued, counted in Stats, charged against MaxStored.
func testHistoryRecordKept(t *testing.T, newStore Factory) {
	f := setupHistory(t, newStore, 0)
	e := f.sized("task-1", 3000)
	f.fanOut(e, "app", "archive")
	r := f.wantRecord(e.ID, "queued app=queued/0 archive=queued/0")
	if r.Key != e.Key || !r.Received.Equal(e.Received) || r.BodySize != len(e.Body) || string(r.Body) != string(e.Body) {
		t.Errorf("record: key %q, received %v, body %d bytes (%d given); want the payload's", r.Key, r.Received, r.BodySize, len(r.Body))
	}
	if r.Destinations[1].ID != queue.DeliveryID(e.ID, "archive", false) || !r.Done.IsZero() {
		t.Errorf("record: archive's delivery %q, done %v; want %q, not done", r.Destinations[1].ID, r.Done, queue.DeliveryID(e.ID, "archive", false))
	}
	if st := f.stats(); st.Records != 1 || st.Stored != size(e)+queue.RecordCharge {
		t.Errorf("Stats: %d records, stored %d; want 1, %d", st.Records, st.Stored, size(e)+queue.RecordCharge)
	}
	f.wantAdmit("task-1", queue.Duplicate)
	if st := f.stats(); st.Records != 1 {
		t.Errorf("a duplicate made a record: %d records", st.Records)
	}
}

// testHistoryAttempts: each attempt is recorded with its destination,
// time, status, duration and error; states follow; the body stays after
// every delivery is done.
func testHistoryAttempts(t *testing.T, newStore Factory) {
	f := setupHistory(t, newStore, 0)
	e := f.sized("task-1", 70000)
	f.fanOut(e, "app", "archive")
	app, archive := f.s.Lane("app"), f.s.Lane("archive")
	a := f.claimFrom(app, 1)[0]
	first := f.attempted(app, a, 503, queue.StateRetrying, "upstream answered 503")
	a.Attempts, a.LastStatus = 1, 503
	if err := app.Retry(f.ctx, a, f.clock.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Second)
	b := f.claimFrom(archive, 1)[0]
	f.attempted(archive, b, 200, queue.StateDelivered, "")
	f.ackIn(archive, b)
	r := f.wantRecord(e.ID, "retrying app=retrying/1 archive=delivered/1")
	if len(r.Attempts) != 2 || r.Attempts[0] != first || r.Attempts[1].Destination != "archive" || r.Attempts[1].Status != 200 {
		t.Fatalf("attempts %+v, want app's 503 then archive's 200", r.Attempts)
	}
	f.clock.Advance(time.Second)
	a = f.claimFrom(app, 1)[0]
	last := f.attempted(app, a, 204, queue.StateDelivered, "")
	f.ackIn(app, a)
	r = f.wantRecord(e.ID, "delivered app=delivered/2 archive=delivered/1")
	if !r.Done.Equal(last.At) || string(r.Body) != string(e.Body) {
		t.Errorf("done %v with %d bytes of body; want %v and the payload's %d", r.Done, len(r.Body), last.At, len(e.Body))
	}
	f.wantCounts(0, 0)
	f.wantStored(size(e) + queue.RecordCharge)
}

// testHistoryTrimmed: a record goes History after it is done, with its
// body; not before, and never while a delivery is queued.
func testHistoryTrimmed(t *testing.T, newStore Factory) {
	f := setupHistory(t, newStore, 0)
	lane := f.s.Lane("app")
	done := f.fanOut(f.sized("done", 100), "app")[0]
	waiting := f.fanOut(f.sized("waiting", 100), "app")[0]
	d := f.claimFrom(lane, 1)[0]
	f.attempted(lane, d, 200, queue.StateDelivered, "")
	f.ackIn(lane, d)
	trim := func(want int) {
		t.Helper()
		n, err := lane.(queue.Recorder).TrimHistory(f.ctx, 100)
		if err != nil || n != want {
			t.Fatalf("TrimHistory = %d, %v; want %d", n, err, want)
		}
	}
	f.clock.Advance(history - time.Second)
	trim(0)
	f.event(done.ID)
	f.clock.Advance(time.Second)
	trim(1)
	f.wantNoEvent(done.ID)
	f.clock.Advance(100 * history)
	trim(0)
	f.event(waiting.ID)
	if st := f.stats(); st.Records != 1 || st.Stored != sizeOf("waiting", 100)+queue.RecordCharge {
		t.Errorf("Stats: %d records, stored %d; want 1, %d", st.Records, st.Stored, sizeOf("waiting", 100)+queue.RecordCharge)
	}
}

// testHistoryAttemptsCapped: a payload retried many times keeps its first
// attempt and the latest ones, and says how many it left out; long errors
// are cut.
func testHistoryAttemptsCapped(t *testing.T, newStore Factory) {
	f := setupHistory(t, newStore, 0)
	lane := f.s.Lane("app")
	e := f.fanOut(f.entry("task-1"), "app")[0]
	const n = 25
	for i := 1; i <= n; i++ {
		c := f.claimFrom(lane, 1)[0]
		f.attempted(lane, c, 500+i, queue.StateRetrying, strings.Repeat("é", 300))
		c.Attempts = i
		if err := lane.Retry(f.ctx, c, f.clock.Now()); err != nil {
			t.Fatal(err)
		}
		f.clock.Advance(time.Minute)
	}
	r := f.event(e.ID)
	if len(r.Attempts) != queue.MaxRecordAttempts || r.AttemptsLeftOut != n-queue.MaxRecordAttempts {
		t.Fatalf("%d attempts kept, %d left out; want %d, %d", len(r.Attempts), r.AttemptsLeftOut, queue.MaxRecordAttempts, n-queue.MaxRecordAttempts)
	}
	if r.Attempts[0].Status != 501 || r.Attempts[1].Status != 500+n-queue.MaxRecordAttempts+2 || r.Attempts[len(r.Attempts)-1].Status != 500+n {
		t.Errorf("statuses kept %v..., want the first (501) and the latest", r.Attempts[:2])
	}
	if got := len(r.Attempts[0].Error); got > queue.MaxAttemptError || got < queue.MaxAttemptError-1 || !strings.HasPrefix(r.Attempts[0].Error, "é") {
		t.Errorf("an error of 600 bytes kept as %d bytes (%q...)", got, r.Attempts[0].Error[:4])
	}
	if r.Destinations[0].Attempts != n {
		t.Errorf("the delivery counts %d attempts, want %d", r.Destinations[0].Attempts, n)
	}
}

// testHistoryDeadAndReplay: a dead delivery makes the record dead; its
// replay queues it again; deleting the dead letter keeps the record and
// its body.
func testHistoryDeadAndReplay(t *testing.T, newStore Factory) {
	f := setupHistory(t, newStore, 0)
	e := f.sized("task-1", 500)
	ds := f.fanOut(e, "app", "archive")
	app, archive := f.s.Lane("app"), f.s.Lane("archive")
	a := f.claimFrom(app, 1)[0]
	f.attempted(app, a, 422, queue.StateDead, "upstream answered 422")
	f.buryIn(app, a)
	f.wantRecord(e.ID, "dead app=dead/1 archive=queued/0")
	f.replay([]string{ds[0].ID}, 1)
	f.wantRecord(e.ID, "queued app=queued/1 archive=queued/0")
	a = f.claimFrom(app, 1)[0]
	f.attempted(app, a, 422, queue.StateDead, "upstream answered 422")
	f.buryIn(app, a)
	b := f.claimFrom(archive, 1)[0]
	f.attempted(archive, b, 200, queue.StateDelivered, "")
	f.ackIn(archive, b)
	r := f.wantRecord(e.ID, "dead app=dead/2 archive=delivered/1")
	if r.Done.IsZero() {
		t.Error("a record with every delivery delivered or dead is not done")
	}
	if err := f.s.DeleteDead(f.ctx, ds[0].ID); err != nil {
		t.Fatal(err)
	}
	if r := f.wantRecord(e.ID, "dead app=dead/2 archive=delivered/1"); string(r.Body) != string(e.Body) {
		t.Errorf("after the dead letter was deleted the record has %d bytes of body, want %d", len(r.Body), len(e.Body))
	}
	f.wantStored(size(e) + queue.RecordCharge)
}

// testHistoryResend: resending a delivered payload queues its delivered
// deliveries again, with their IDs; one not delivered is not resent.
func testHistoryResend(t *testing.T, newStore Factory) {
	f := setupHistory(t, newStore, 0)
	e := f.sized("task-1", 500)
	ds := f.fanOut(e, "app", "archive")
	app, archive := f.s.Lane("app"), f.s.Lane("archive")
	a := f.claimFrom(app, 1)[0]
	f.attempted(app, a, 200, queue.StateDelivered, "")
	// recorded delivered, not acked yet: nothing to resend until it is
	if n, err := f.s.Resend(f.ctx, e.ID); err != nil || n != 0 {
		t.Fatalf("Resend before the ack landed = %d, %v; want 0", n, err)
	}
	f.ackIn(app, a)
	if n, err := f.s.Resend(f.ctx, e.ID); err != nil || n != 1 {
		t.Fatalf("Resend = %d, %v; want 1 (app; archive is still queued)", n, err)
	}
	f.wantRecord(e.ID, "queued app=queued/1 archive=queued/0")
	again := f.wantClaimFrom(app, 10, ds[0])
	sameEntry(t, again[0], ds[0], true)
	if again[0].Attempts != 0 {
		t.Errorf("resent: %d attempts, want 0", again[0].Attempts)
	}
	f.attempted(app, again[0], 200, queue.StateDelivered, "")
	f.ackIn(app, again[0])
	f.wantClaimFrom(archive, 10, ds[1])
	f.wantRecord(e.ID, "queued app=delivered/2 archive=queued/0")
	if _, err := f.s.Resend(f.ctx, "no-such-record"); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Resend(unknown) = %v, want ErrNotFound", err)
	}
}

// testHistoryGivesWayFirst: under MaxStored, the records of done payloads
// give way to a new payload before any dead letter does.
func testHistoryGivesWayFirst(t *testing.T, newStore Factory) {
	const n = storedBody
	per := sizeOf("a", n) + queue.RecordCharge
	f := setupHistory(t, newStore, 2*per)
	lane := f.s.Lane("app")
	delivered := f.fanOut(f.sized("a", n), "app")[0]
	c := f.claimFrom(lane, 1)[0]
	f.attempted(lane, c, 200, queue.StateDelivered, "")
	f.ackIn(lane, c)
	f.clock.Advance(time.Minute)
	dead := f.fanOut(f.sized("b", n), "app")[0]
	c = f.claimFrom(lane, 1)[0]
	f.attempted(lane, c, 410, queue.StateDead, "gone")
	f.buryIn(lane, c)
	f.wantStored(2 * per)

	f.fanOut(f.sized("c", n), "app") // a's record gives way, not b's letter
	f.wantNoEvent(delivered.ID)
	f.deadEntry(dead.ID)
	if got := f.evicted.Load(); got != 0 {
		t.Errorf("%d dead letters gave way, want none while a record could", got)
	}
	f.wantStored(2 * per)
	// the next one: b's record is done (dead) and gives way; its dead
	// letter still holds the body, so that is not enough and the letter
	// goes too
	f.clock.Advance(time.Minute)
	f.fanOut(f.sized("d", n), "app")
	if got := f.evicted.Load(); got != 1 {
		t.Errorf("%d dead letters gave way, want 1", got)
	}
	f.wantNoEvent(dead.ID)
}

// testHistoryPagingAndSearch: Events lists newest first in pages, finds by
// key substring in any case, destination, state and time, and looks at no
// more than Scan records per call.
func testHistoryPagingAndSearch(t *testing.T, newStore Factory) {
	f := setupHistory(t, newStore, 0)
	var ids []string
	for i := range 30 {
		dest := []string{"app"}
		if i%3 == 0 {
			dest = []string{"app", "archive"}
		}
		e := f.entry(fmt.Sprintf("Task-%02d", i))
		f.fanOut(e, dest...)
		ids = append(ids, e.ID)
		f.clock.Advance(time.Minute)
	}
	var got []string
	for before, pages := "", 0; ; pages++ {
		rs, next := f.events(queue.EventQuery{Before: before, Limit: 7})
		for _, r := range rs {
			got = append(got, r.ID)
		}
		if next == "" {
			break
		}
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		before = next
	}
	for i := range ids {
		if i >= len(got) || got[i] != ids[len(ids)-1-i] {
			t.Fatalf("paged %v, want every record newest first %v", got, ids)
		}
	}
	count := func(q queue.EventQuery) int {
		q.Limit = 100
		rs, _ := f.events(q)
		return len(rs)
	}
	if n := count(queue.EventQuery{Key: "task-1"}); n != 10 {
		t.Errorf("key task-1 (any case): %d records, want 10", n)
	}
	if n := count(queue.EventQuery{Destination: "archive"}); n != 10 {
		t.Errorf("destination archive: %d records, want 10", n)
	}
	if n := count(queue.EventQuery{State: queue.StateQueued}); n != 30 {
		t.Errorf("state queued: %d records, want 30", n)
	}
	if n := count(queue.EventQuery{State: queue.StateDelivered}); n != 0 {
		t.Errorf("state delivered: %d records, want 0", n)
	}
	start := NewClock().Now()
	if n := count(queue.EventQuery{Since: start.Add(10 * time.Minute), Until: start.Add(20 * time.Minute)}); n != 10 {
		t.Errorf("received within 10 minutes: %d records, want 10", n)
	}
	// a search for the oldest records looks at 5 at a time
	rs, next := f.events(queue.EventQuery{Key: "task-00", Limit: 10, Scan: 5})
	if len(rs) != 0 || next == "" {
		t.Errorf("Scan 5: %d records, next %q; want none yet and a next page", len(rs), next)
	}
}

// testHistoryOff: with History 0 nothing is recorded.
func testHistoryOff(t *testing.T, newStore Factory) {
	f := setupStored(t, newStore, 0)
	e := f.sized("a", 100)
	f.fanOut(e, "app")
	lane := f.s.Lane("app")
	c := f.claimFrom(lane, 1)[0]
	f.attempted(lane, c, 200, queue.StateDelivered, "")
	f.ackIn(lane, c)
	f.wantNoEvent(e.ID)
	if rs, _ := f.events(queue.EventQuery{Limit: 10}); len(rs) != 0 {
		t.Errorf("Events: %d records with History 0", len(rs))
	}
	f.wantStored(0)
}

// HistorySurvives checks that records outlive the process: first admits a
// payload and records an attempt; in the store reopen returns (the same
// file, or another process on the same Redis) the record is there, with
// its attempt and body, and the next attempt adds to it.
func HistorySurvives(t *testing.T, clock *Clock, first queue.Store, reopen func() queue.Store) {
	t.Helper()
	f := &fixture{t: t, ctx: t.Context(), s: first, clock: clock}
	e := f.sized("task-1", 70000)
	f.fanOut(e, "app")
	lane := f.s.Lane("app")
	c := f.claimFrom(lane, 1)[0]
	f.attempted(lane, c, 503, queue.StateRetrying, "upstream answered 503")
	if err := lane.Retry(f.ctx, c, clock.Now()); err != nil {
		t.Fatal(err)
	}
	f.s = reopen()
	lane = f.s.Lane("app")
	r := f.wantRecord(e.ID, "retrying app=retrying/1")
	if string(r.Body) != string(e.Body) || len(r.Attempts) != 1 || r.Attempts[0].Status != 503 {
		t.Fatalf("reopened: record with %d bytes of body and attempts %+v", len(r.Body), r.Attempts)
	}
	c = f.claimFrom(lane, 1)[0]
	f.attempted(lane, c, 200, queue.StateDelivered, "")
	f.ackIn(lane, c)
	f.wantRecord(e.ID, "delivered app=delivered/2")
}
