package bolt

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

// A lane's Claim looks at its own keys only, and not again at those it
// found held or waiting: a lane with many deliveries held and many
// waiting costs another lane's Claim nothing, nor its own next one.
func TestLaneClaimStepsOverNoOtherLane(t *testing.T) {
	ctx := t.Context()
	clock := storetest.NewClock()
	steps := 0
	s, _ := openHooked(t, filepath.Join(t.TempDir(), "relay.db"), queue.Options{Window: time.Hour, Now: clock.Now},
		testHooks{claimStep: func() { steps++ }})
	admit := func(key string, dests ...string) {
		t.Helper()
		if a, err := s.Admit(ctx, &queue.Entry{Key: key, Body: []byte("{}"), Destinations: dests}); err != nil || a != queue.Accepted {
			t.Fatalf("Admit(%s) = %v, %v", key, a, err)
		}
	}
	app, archive := s.Lane("app"), s.Lane("archive")
	const held, waiting = 100, 50
	for i := range held + waiting {
		admit("app-"+strconv.Itoa(i), "app")
	}
	got, err := app.Claim(ctx, held+waiting)
	if err != nil || len(got) != held+waiting {
		t.Fatalf("app: claimed %d, %v; want %d", len(got), err, held+waiting)
	}
	for _, e := range got[held:] {
		if err := app.Retry(ctx, e, clock.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	admit("archive-1", "archive")

	for _, c := range []struct {
		name  string
		lane  queue.Claimer
		want  int
		steps int // at most
	}{
		// its one delivery, and the end of its lane
		{"archive", archive, 1, 1},
		// app's claimFrom is past its held ones; its waiting index stops
		// at the first one not due
		{"app", app, 0, 1},
		{"the store's own lane", s, 0, 0},
	} {
		steps = 0
		got, err := c.lane.Claim(ctx, 10)
		if err != nil || len(got) != c.want {
			t.Fatalf("%s: claimed %d, %v; want %d", c.name, len(got), err, c.want)
		}
		if steps > c.steps {
			t.Errorf("%s: Claim looked at %d keys, want at most %d", c.name, steps, c.steps)
		}
	}

	// a release in app sends app's next claim back over its held ones,
	// and costs archive nothing
	released := got[0].ID
	if err := app.Release(ctx, []string{released}); err != nil {
		t.Fatal(err)
	}
	admit("archive-2", "archive")
	steps = 0
	if got, err := archive.Claim(ctx, 10); err != nil || len(got) != 1 || steps > 1 {
		t.Errorf("archive after app's release: claimed %d, %v, looking at %d keys; want 1 at 1 key", len(got), err, steps)
	}
	if got, err := app.Claim(ctx, 10); err != nil || len(got) != 1 || got[0].ID != released {
		t.Errorf("app after its release: claimed %d, %v; want %s", len(got), err, released)
	}
}
