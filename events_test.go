package webhookrelay

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// eventLog is an events handler that records the events' ids.
type eventLog struct {
	mu  sync.Mutex
	ids []any
}

func (l *eventLog) Handle(_ context.Context, e caddy.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids = append(l.ids, e.Data["id"])
	return nil
}

func (l *eventLog) got() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.ids)
}

// startedApp returns a started events app of a config of its own whose
// handler for webhook_relay.delivered is log, and the config's cancel.
func startedApp(t *testing.T, log *eventLog) (*configEvents, context.CancelFunc) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	app := new(caddyevents.App)
	if err := app.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := app.On("webhook_relay.delivered", log); err != nil {
		t.Fatal(err)
	}
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	return &configEvents{app: app, ctx: ctx}, cancel
}

func emitID(r *relayEvents, id int) {
	if r.Wants("webhook_relay.delivered") {
		r.Emit("webhook_relay.delivered", map[string]any{"id": id})
	}
}

// Events before the first config started wait for it, in order; after a
// reload they go to the new config's app alone, and the old config's
// cleanup does not take the new one's away; none go to a stopped config.
func TestRelayEventsFollowTheRunningConfig(t *testing.T) {
	var r relayEvents
	emitID(&r, 1)
	emitID(&r, 2)

	var first, second eventLog
	c1, _ := startedApp(t, &first)
	r.use(c1)
	testkit.Eventually(t, 5*time.Second, func() bool { return first.got() == "[1 2]" },
		"events before the start: %v; want [1 2]", testkit.Lazy(first.got))

	emitID(&r, 3)
	c2, cancel2 := startedApp(t, &second)
	r.use(c2)    // the new config started
	r.forget(c1) // the old one is cleaned up
	emitID(&r, 4)
	if got := first.got(); got != "[1 2 3]" {
		t.Errorf("first config's app got %v; want [1 2 3]", got)
	}
	if got := second.got(); got != "[4]" {
		t.Errorf("second config's app got %v; want [4]", got)
	}

	cancel2() // stopped, not yet cleaned up
	emitID(&r, 5)
	r.forget(c2)
	emitID(&r, 6)
	if got := second.got(); got != "[4]" {
		t.Errorf("second config's app got %v after it stopped; want [4]", got)
	}
	if len(r.pending) != 0 {
		t.Errorf("%d events kept after the first start; want none", len(r.pending))
	}
}

// At most maxPendingEvents wait for the first config.
func TestRelayEventsPendingBounded(t *testing.T) {
	var r relayEvents
	for i := range maxPendingEvents + 10 {
		emitID(&r, i)
	}
	if len(r.pending) != maxPendingEvents {
		t.Errorf("%d events wait; want %d", len(r.pending), maxPendingEvents)
	}
}
