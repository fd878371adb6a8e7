package storetest

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// The bound on the bytes kept (MaxStored): every store counts
// queue.StoredSize of each queued payload and dead letter, makes the
// oldest dead letters give way to a new payload, and refuses the payload
// when that is not enough.

// storedBody is the body size of the entries these tests admit, so that
// a bound is a whole number of them.
const storedBody = 1000

// storedFixture is a fixture whose store has MaxStored and counts what
// Options.Evicted is told.
type storedFixture struct {
	*fixture
	evicted atomic.Int64
}

func setupStored(t *testing.T, newStore Factory, maxStored int64) *storedFixture {
	t.Helper()
	clock := NewClock()
	sf := &storedFixture{}
	s := newStore(t, queue.Options{Window: window, MaxStored: maxStored, Now: clock.Now,
		Evicted: func(n int) { sf.evicted.Add(int64(n)) }})
	sf.fixture = &fixture{t: t, ctx: t.Context(), s: s, clock: clock}
	return sf
}

// sized is an entry for key whose body has n bytes and one kept header.
func (f *fixture) sized(key string, n int) *queue.Entry {
	e := f.entry(key)
	e.Body = []byte(strings.Repeat("x", n))
	e.Request.Headers = []queue.HeaderField{{Name: "Webhook-Id", Value: key}}
	return e
}

// size is what e counts against MaxStored.
func size(e *queue.Entry) int64 { return queue.StoredSize(len(e.Body), e.Request.Headers) }

// sizeOf is what the entry sized(key, n) counts against MaxStored.
func sizeOf(key string, n int) int64 {
	return queue.StoredSize(n, []queue.HeaderField{{Name: "Webhook-Id", Value: key}})
}

func (f *fixture) acceptSized(key string, n int) *queue.Entry {
	f.t.Helper()
	e := f.sized(key, n)
	got, err := f.admit(e)
	if err != nil || got != queue.Accepted {
		f.t.Fatalf("Admit(%q, %d bytes) = %v, %v; want accepted", key, n, got, err)
	}
	return e
}

func (f *fixture) wantStoreFull(key string, n int) {
	f.t.Helper()
	got, err := f.admit(f.sized(key, n))
	if !errors.Is(err, queue.ErrStoreFull) {
		f.t.Fatalf("Admit(%q, %d bytes) = %v, %v; want ErrStoreFull", key, n, got, err)
	}
}

func (f *fixture) wantStored(want int64) {
	f.t.Helper()
	if got := f.stats().Stored; got != want {
		f.t.Fatalf("Stats: stored %d bytes, want %d", got, want)
	}
}

// buryKeys claims everything queued and buries the entries of keys, a
// minute apart, in the order given.
func (f *fixture) buryKeys(keys ...string) {
	f.t.Helper()
	byKey := make(map[string]*queue.Entry)
	for _, e := range f.claim(1000) {
		byKey[e.Key] = e
	}
	for _, k := range keys {
		e, ok := byKey[k]
		if !ok {
			f.t.Fatalf("%q is not queued", k)
		}
		f.clock.Advance(time.Minute)
		f.bury(e)
	}
}

// testStoredCounted: the count is exact through admit, ack, bury, replay,
// delete and trim, and a refused admit counts nothing.
func testStoredCounted(t *testing.T, newStore Factory) {
	f := setupStored(t, newStore, 0)
	f.wantStored(0)
	a := f.acceptSized("a", 100)
	b := f.acceptSized("b", 2000)
	c := f.acceptSized("c", 30)
	d := f.acceptSized("d", 4)
	f.wantStored(size(a) + size(b) + size(c) + size(d))
	f.wantAdmit("a", queue.Duplicate)
	f.wantStored(size(a) + size(b) + size(c) + size(d))

	got := f.claim(10)
	f.ack(got[0]) // a: delivered
	f.wantStored(size(b) + size(c) + size(d))
	f.ack(got[0]) // twice counts once
	f.wantStored(size(b) + size(c) + size(d))
	f.bury(got[1], got[2], got[3]) // dead letters keep their bytes
	f.wantStored(size(b) + size(c) + size(d))
	f.replay([]string{b.ID}, 1) // and so does a replay
	f.wantStored(size(b) + size(c) + size(d))
	if err := f.s.DeleteDead(f.ctx, c.ID); err != nil {
		t.Fatalf("DeleteDead: %v", err)
	}
	f.wantStored(size(b) + size(d))
	if gone := f.trim(0, f.clock.Now().Add(time.Hour), 10); len(gone) != 1 {
		t.Fatalf("TrimDead removed %v, want d", gone)
	}
	f.wantStored(size(b))
	f.ack(f.claim(10)...) // the replayed b
	f.wantStored(0)
	f.wantCounts(0, 0)
}

// testStoredEvictsOldestDead: a payload over the bound makes the dead
// letters that died first give way, as few as it needs, and is accepted.
func testStoredEvictsOldestDead(t *testing.T, newStore Factory) {
	one := sizeOf("k0", storedBody) // keys of the same length: same size
	f := setupStored(t, newStore, 4*one)
	for _, k := range []string{"k1", "k2", "k3", "k4"} {
		f.acceptSized(k, storedBody)
	}
	f.wantStoreFull("k5", storedBody)
	f.buryKeys("k3", "k1", "k4", "k2") // k3 died first, then k1: not id order
	f.wantCounts(0, 4)

	f.acceptSized("k5", storedBody)
	f.wantCounts(1, 3)
	keys := func() []string {
		var out []string
		for _, e := range f.dead("", 10) {
			out = append(out, e.Key)
		}
		return out
	}
	if got := fmt.Sprint(keys()); got != "[k1 k2 k4]" {
		t.Fatalf("dead letters left %s, want [k1 k2 k4]: k3 died first and gives way", got)
	}
	// a payload twice the size takes the next two
	f.acceptSized("big", int(2*one-sizeOf("big", 0)))
	if got := fmt.Sprint(keys()); got != "[k2]" {
		t.Fatalf("dead letters left %s, want [k2]", got)
	}
	f.wantStored(4 * one)
	if got := f.evicted.Load(); got != 3 {
		t.Fatalf("Evicted was told of %d dead letters, want 3", got)
	}
}

// testStoredFullWithoutDead: with no dead letter to give way, the payload
// is refused, its key stays unseen, and acceptance resumes once a delivery
// or a deleted dead letter frees the bytes.
func testStoredFullWithoutDead(t *testing.T, newStore Factory) {
	one := sizeOf("k0", storedBody)
	f := setupStored(t, newStore, 3*one)
	f.acceptSized("k1", storedBody)
	f.acceptSized("k2", storedBody)
	f.wantStoreFull("k3", storedBody+1) // one byte over
	f.wantStoreFull("k3", storedBody+1) // not marked seen: refused again, not a duplicate
	f.acceptSized("k4", storedBody)     // exactly up to the bound
	f.wantStored(3 * one)
	f.wantCounts(3, 0)
	if f.evicted.Load() != 0 {
		t.Fatalf("Evicted was told of %d dead letters with none there", f.evicted.Load())
	}

	got := f.claim(10)
	f.ack(got[0])
	f.acceptSized("k3", storedBody) // the sender's retry gets in
	f.wantStored(3 * one)

	// dead letters give way even when that is not enough: queued
	// payloads come first
	f.clock.Advance(time.Minute)
	f.bury(got[1])
	f.buryKeys("k3")
	f.wantCounts(1, 2)
	f.wantStoreFull("k5", storedBody+int(one)+1)
	f.wantCounts(1, 0)
	f.wantStored(one)
	f.acceptSized("k5", storedBody)
}

// testStoredDeleteFrees: deleting a dead letter makes room.
func testStoredDeleteFrees(t *testing.T, newStore Factory) {
	one := sizeOf("k0", storedBody)
	f := setupStored(t, newStore, one)
	f.acceptSized("k1", storedBody)
	e := f.claim(1)[0]
	f.bury(e)
	f.s.SetMaxStored(one / 2) // a reload lowered the bound: nothing fits
	f.wantStoreFull("k2", storedBody)
	f.wantCounts(0, 0) // k1 gave way, and k2 still does not fit
	f.s.SetMaxStored(one)
	f.acceptSized("k2", storedBody)
	f.buryKeys("k2")
	if err := f.s.DeleteDead(f.ctx, f.dead("", 1)[0].ID); err != nil {
		t.Fatalf("DeleteDead: %v", err)
	}
	f.wantStored(0)
	f.acceptSized("k3", storedBody)
	if f.evicted.Load() != 1 {
		t.Fatalf("Evicted was told of %d dead letters, want 1", f.evicted.Load())
	}
}
