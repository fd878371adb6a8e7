package storetest

import (
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// Fan-out: one payload admitted for several destinations is stored once
// and waits in each destination's lane as a delivery of its own.

func (f *fixture) wantClaimFrom(c queue.Claimer, max int, want ...*queue.Entry) []*queue.Entry {
	f.t.Helper()
	got := f.claimFrom(c, max)
	if !slicesEqual(ids(got), ids(want)) {
		f.t.Fatalf("Claim(%d) = %v, want %v", max, ids(got), ids(want))
	}
	return got
}

func (f *fixture) ackIn(c queue.Claimer, es ...*queue.Entry) {
	f.t.Helper()
	for _, e := range es {
		if err := c.Ack(f.ctx, e.ID); err != nil {
			f.t.Fatalf("Ack(%s): %v", e.ID, err)
		}
	}
}

func (f *fixture) buryIn(c queue.Claimer, es ...*queue.Entry) {
	f.t.Helper()
	for _, e := range es {
		if err := c.Bury(f.ctx, e); err != nil {
			f.t.Fatalf("Bury(%s): %v", e.ID, err)
		}
	}
}

// fanOut admits an entry for key to dests and returns the deliveries the
// store should have made of it, one per destination, in dests' order.
func (f *fixture) fanOut(e *queue.Entry, dests ...string) []*queue.Entry {
	f.t.Helper()
	e.Destinations = dests
	got, err := f.admit(e)
	if err != nil || got != queue.Accepted {
		f.t.Fatalf("Admit(%q to %v) = %v, %v; want accepted", e.Key, dests, got, err)
	}
	f.wantAdmitted(e)
	if e.Payload != e.ID {
		f.t.Fatalf("Admit(%q): Payload %q, ID %q; want both the payload's ID", e.Key, e.Payload, e.ID)
	}
	out := make([]*queue.Entry, len(dests))
	for i, d := range dests {
		c := *e
		c.ID = queue.DeliveryID(e.ID, d, len(dests) == 1)
		c.Destination, c.Destinations = d, nil
		out[i] = &c
	}
	return out
}

// testFanOutLanes: each destination's delivery waits in its lane alone,
// with its own ID, the payload's ID, the body and the request; the store's
// own lane has none of them; the backlog counts deliveries and the bytes
// count the payload once.
func testFanOutLanes(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	e := f.sized("task-1", 5000)
	ds := f.fanOut(e, "app", "archive", "analytics")
	if ds[0].ID == ds[1].ID || ds[1].ID == ds[2].ID {
		t.Fatalf("deliveries share an ID: %v", ids(ds))
	}
	f.wantClaim(10)
	for _, d := range ds {
		got := f.wantClaimFrom(f.s.Lane(d.Destination), 10, d)
		sameEntry(t, got[0], d, true)
		if got[0].Payload != e.ID || got[0].Destination != d.Destination {
			t.Errorf("%s: Payload %q, Destination %q; want %q, %q", got[0].ID, got[0].Payload, got[0].Destination, e.ID, d.Destination)
		}
	}
	st := f.stats()
	wantLanes := map[string]int{"app": 1, "archive": 1, "analytics": 1}
	if st.Backlog != 3 || !maps.Equal(st.Lanes, wantLanes) {
		t.Errorf("Stats: backlog %d, lanes %v; want 3, %v", st.Backlog, st.Lanes, wantLanes)
	}
	if st.Stored != size(e) {
		t.Errorf("Stats: stored %d bytes, want %d (the payload, once)", st.Stored, size(e))
	}
	if st.OldestQueued.IsZero() {
		t.Errorf("Stats: OldestQueued is zero with three deliveries queued")
	}
	// and one destination alone is a payload's only delivery
	one := f.fanOut(f.entry("task-2"), "app")
	if one[0].ID != one[0].Payload {
		t.Errorf("single delivery: ID %q, Payload %q; want the same", one[0].ID, one[0].Payload)
	}
	f.wantClaimFrom(f.s.Lane("app"), 10, one[0])
}

// testFanOutBodyShared: the body stays while any delivery is queued or
// dead, and goes with the last.
func testFanOutBodyShared(t *testing.T, newStore Factory) {
	f := setupStored(t, newStore, 0)
	e := f.sized("task-1", 3000)
	ds := f.fanOut(e, "app", "archive", "analytics")
	app, archive, analytics := f.s.Lane("app"), f.s.Lane("archive"), f.s.Lane("analytics")
	a := f.claimFrom(app, 1)
	f.ackIn(app, a...)
	f.wantStored(size(e))
	f.wantCounts(2, 0)

	b := f.claimFrom(archive, 1) // reads the body, still there
	f.clock.Advance(time.Second)
	f.buryIn(archive, b...)
	f.wantStored(size(e))
	if got := f.deadEntry(ds[1].ID); string(got.Body) != string(e.Body) {
		t.Fatalf("dead letter %s: body of %d bytes, want the payload's %d", ds[1].ID, len(got.Body), len(e.Body))
	}
	c := f.claimFrom(analytics, 1)
	f.ackIn(analytics, c...)
	f.wantStored(size(e)) // the dead letter holds it
	f.wantCounts(0, 1)
	if got := f.deadEntry(ds[1].ID); string(got.Body) != string(e.Body) {
		t.Fatalf("dead letter %s after the others were delivered: body of %d bytes, want %d", ds[1].ID, len(got.Body), len(e.Body))
	}
	if err := f.s.DeleteDead(f.ctx, ds[1].ID); err != nil {
		t.Fatalf("DeleteDead(%s): %v", ds[1].ID, err)
	}
	f.wantStored(0)
	f.wantCounts(0, 0)
}

// testFanOutReplayToLane: a replayed dead letter goes back to its own
// lane, keeps its payload and its body, and the other destinations are
// not given the payload again.
func testFanOutReplayToLane(t *testing.T, newStore Factory) {
	f := setupStored(t, newStore, 0)
	e := f.sized("task-1", 2000)
	ds := f.fanOut(e, "app", "archive")
	app, archive := f.s.Lane("app"), f.s.Lane("archive")
	f.ackIn(app, f.claimFrom(app, 1)...)
	f.buryIn(archive, f.claimFrom(archive, 1)...)
	f.replay(nil, 1)
	f.wantClaimFrom(app, 10)
	f.wantClaim(10)
	back := f.wantClaimFrom(archive, 10, ds[1])
	sameEntry(t, back[0], ds[1], true)
	if back[0].Payload != e.ID {
		t.Errorf("replayed: Payload %q, want %q", back[0].Payload, e.ID)
	}
	f.wantStored(size(e))
	f.ackIn(archive, back...)
	f.wantStored(0)
	f.wantCounts(0, 0)
}

// testFanOutLanesApart: a lane whose deliveries wait for a retry, or are
// held, never keeps another lane's due deliveries from being claimed, and
// NextDue is per lane.
func testFanOutLanesApart(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	app, archive := f.s.Lane("app"), f.s.Lane("archive")
	var first []*queue.Entry
	for _, k := range []string{"a", "b", "c"} {
		first = append(first, f.fanOut(f.entry(k), "app", "archive")...)
		f.clock.Advance(time.Second)
	}
	// app fails all three and waits a minute; archive is not held up
	held := f.claimFrom(app, 10)
	if len(held) != 3 {
		t.Fatalf("app: claimed %v, want 3", ids(held))
	}
	due := f.clock.Now().Add(time.Minute)
	for _, h := range held {
		h.Attempts, h.LastStatus = 1, 503
		if err := app.Retry(f.ctx, h, due); err != nil {
			t.Fatalf("Retry(%s): %v", h.ID, err)
		}
	}
	if next, err := archive.NextDue(f.ctx); err != nil || !next.IsZero() {
		t.Fatalf("archive: NextDue = %v, %v; want none (only app waits)", next, err)
	}
	if next, err := app.NextDue(f.ctx); err != nil || !next.Equal(due) {
		t.Fatalf("app: NextDue = %v, %v; want %v", next, err, due)
	}
	f.wantClaimFrom(archive, 10, first[1], first[3], first[5])
	f.wantClaimFrom(app, 10)
	f.clock.Advance(time.Minute)
	f.wantClaimFrom(app, 10, first[0], first[2], first[4])
}

// testFanOutBacklogCountsDeliveries: MaxBacklog bounds deliveries, so a
// payload for two destinations takes two places, and is refused whole.
func testFanOutBacklogCountsDeliveries(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 3)
	f.fanOut(f.entry("a"), "app", "archive")
	e := f.entry("b")
	e.Destinations = []string{"app", "archive"}
	if got, err := f.admit(e); !errors.Is(err, queue.ErrBacklogFull) {
		t.Fatalf("Admit(b to two destinations with one place left) = %v, %v; want ErrBacklogFull", got, err)
	}
	f.wantCounts(2, 0)
	f.fanOut(f.entry("b"), "app") // refused whole: its key is not seen
	f.wantCounts(3, 0)
}

// testFanOutTrimAndEvict: trimming or evicting one destination's dead
// letter frees nothing while another delivery of the payload holds its
// body, and frees the payload with the last.
func testFanOutTrimAndEvict(t *testing.T, newStore Factory) {
	const n = storedBody
	f := setupStored(t, newStore, 2*sizeOf("a", n))
	e := f.sized("a", n)
	ds := f.fanOut(e, "app", "archive")
	app, archive := f.s.Lane("app"), f.s.Lane("archive")
	f.clock.Advance(time.Minute)
	f.buryIn(app, f.claimFrom(app, 1)...)
	gone, err := f.s.TrimDead(f.ctx, 0, f.clock.Now().Add(time.Nanosecond), 10)
	if err != nil || len(gone) != 1 || gone[0].ID != ds[0].ID {
		t.Fatalf("TrimDead = %v, %v; want %s", ids(gone), err, ds[0].ID)
	}
	f.wantStored(size(e)) // archive's delivery still needs it
	if body, err := archive.Body(f.ctx, ds[1].ID); err != nil || string(body) != string(e.Body) {
		t.Fatalf("Body(%s) after the other's letter was trimmed: %d bytes, %v", ds[1].ID, len(body), err)
	}

	// a dead letter that shares its body with a queued delivery frees
	// nothing when it gives way, so the next payload does not fit
	f.acceptSized("b", n) // no destination: the store's own lane
	f.buryKeys("b")
	f.clock.Advance(time.Minute)
	f.buryIn(archive, f.claimFrom(archive, 1)...)
	// dead now: b (older) and a's archive letter; a fanned payload c of
	// the same size fits once b gives way
	c := f.sized("c", n)
	f.fanOut(c, "app", "archive")
	if got := f.evicted.Load(); got != 1 {
		t.Errorf("Evicted told %d, want 1 (b)", got)
	}
	f.wantStored(size(e) + size(c))
	f.wantCounts(2, 1)
}

// testFanOutDuplicate: a payload seen before is a duplicate for every
// destination, and stores nothing.
func testFanOutDuplicate(t *testing.T, newStore Factory) {
	f := setupStored(t, newStore, 0)
	e := f.sized("a", 100)
	f.fanOut(e, "app", "archive")
	again := f.sized("a", 100)
	again.Destinations = []string{"app", "archive"}
	if got, err := f.admit(again); err != nil || got != queue.Duplicate {
		t.Fatalf("Admit(a) again = %v, %v; want duplicate", got, err)
	}
	f.wantCounts(2, 0)
	f.wantStored(size(e))
}

// LanesSurvive checks that fanned-out deliveries outlive the process:
// first admits a payload for two destinations and claims one delivery
// without ending it; in the store reopen returns (the same file, or
// another process on the same Redis once the first's claims expired),
// each lane hands out its delivery again, with the shared body.
func LanesSurvive(t *testing.T, clock *Clock, first queue.Store, reopen func() queue.Store) {
	t.Helper()
	f := &fixture{t: t, ctx: t.Context(), s: first, clock: clock}
	e := f.sized("task-1", 70000) // large enough for a store's big-body path
	ds := f.fanOut(e, "app", "archive")
	f.wantClaimFrom(f.s.Lane("app"), 10, ds[0])
	f.s = reopen()
	for _, d := range ds {
		lane := f.s.Lane(d.Destination)
		got := f.wantClaimFrom(lane, 10, d)
		sameEntry(t, got[0], d, true)
		f.ackIn(lane, got...)
	}
	f.wantCounts(0, 0)
	f.wantStored(0)
}
