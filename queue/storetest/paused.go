package storetest

import (
	"testing"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// wantPaused checks the store's paused destinations.
func (f *fixture) wantPaused(want ...string) {
	f.t.Helper()
	got, err := f.s.Paused(f.ctx)
	if err != nil {
		f.t.Fatalf("Paused: %v", err)
	}
	if want == nil {
		want = []string{}
	}
	if got == nil || !slicesEqual(got, want) {
		f.t.Fatalf("Paused = %#v, want %#v", got, want)
	}
}

func (f *fixture) setPaused(destination string, paused bool) {
	f.t.Helper()
	if err := f.s.SetPaused(f.ctx, destination, paused); err != nil {
		f.t.Fatalf("SetPaused(%q, %v): %v", destination, paused, err)
	}
}

// A pause is kept until resumed, twice is once, and it leaves the queue
// alone: the store only records it, the engine honours it.
func testPauseAndResume(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	f.wantPaused()
	f.setPaused("upstream", true)
	f.setPaused("archive", true)
	f.setPaused("upstream", true)
	f.wantPaused("archive", "upstream")
	a := f.accept("a")
	f.wantClaim(10, a)
	f.setPaused("archive", false)
	f.setPaused("archive", false)
	f.setPaused("never-paused", false)
	f.wantPaused("upstream")
	f.setPaused("upstream", false)
	f.wantPaused()
}

// PauseSurvives checks that pauses outlive the process that set them:
// first pauses two destinations and resumes one; the store reopen returns
// (the same file or Redis, opened again) must still have the other
// paused, and resuming it there must clear it.
func PauseSurvives(t *testing.T, first queue.Store, reopen func() queue.Store) {
	t.Helper()
	f := &fixture{t: t, ctx: t.Context(), s: first, clock: NewClock()}
	f.setPaused("upstream", true)
	f.setPaused("archive", true)
	f.setPaused("archive", false)
	f.s = reopen()
	f.wantPaused("upstream")
	f.setPaused("upstream", false)
	f.wantPaused()
}
