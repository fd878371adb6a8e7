package webhookrelay

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// relayEvents is how a pooled relay's delivery engine emits Caddy events
// (delivery.Events): through the events app of the config that runs now.
// A config's app is used from Caddy's "started" event of that config on,
// never before (its subscriptions are not in place until the app starts)
// and never after the config is stopped: in a reload the new config takes
// over when it has started, and the old one stops after that.
type relayEvents struct {
	live atomic.Pointer[configEvents]

	// Until the first config has started, events wait in pending (at most
	// maxPendingEvents of them): deliveries start at provisioning, before
	// the events app runs.
	mu      sync.Mutex
	started bool
	pending []pendingEvent
}

// maxPendingEvents bounds the events kept until the first config starts.
const maxPendingEvents = 64

type pendingEvent struct {
	name string
	data map[string]any
}

// configEvents is one config's events app, with the context the relay's
// handler was provisioned with: events come from http.handlers.webhook_relay
// and end with that config.
type configEvents struct {
	app *caddyevents.App
	ctx caddy.Context
}

// Wants tells whether the running config's events app has a handler for
// name (or logs events at debug level).
func (r *relayEvents) Wants(name string) bool {
	if c := r.live.Load(); c != nil {
		return c.ctx.Err() == nil && c.app.ShouldEmit(name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.started && len(r.pending) < maxPendingEvents
}

// Emit emits through the running config's events app, synchronously as
// the app does; before the first config has started, the event waits.
func (r *relayEvents) Emit(name string, data map[string]any) {
	c := r.live.Load()
	if c == nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		if !r.started && len(r.pending) < maxPendingEvents {
			r.pending = append(r.pending, pendingEvent{name, data})
		}
		return
	}
	if c.ctx.Err() != nil {
		return
	}
	// A replacer of its own: the app puts the event's placeholders in it.
	ctx := c.ctx.WithValue(caddy.ReplacerCtxKey, caddy.NewReplacer())
	c.app.Emit(ctx, name, data)
}

// use makes c the config events go to, and emits those that waited for it.
func (r *relayEvents) use(c *configEvents) {
	r.live.Store(c)
	r.mu.Lock()
	pending := r.pending
	r.pending, r.started = nil, true
	r.mu.Unlock()
	if len(pending) > 0 {
		// not on the goroutine that is starting the config
		go func() {
			for _, p := range pending {
				r.Emit(p.name, p.data)
			}
		}()
	}
}

// forget stops using c, unless a newer config has taken over.
func (r *relayEvents) forget(c *configEvents) { r.live.CompareAndSwap(c, nil) }

// subscribeEvents sets up the handler's config to take the relay's events over
// once it has started. Called in Provision, before the events app starts.
func (h *Handler) subscribeEvents(ctx caddy.Context) error {
	appIface, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("getting events app: %v", err)
	}
	h.events = &configEvents{app: appIface.(*caddyevents.App), ctx: ctx}
	started := configStarted{r: &h.relay.events, c: h.events}
	if err := h.events.app.On("started", started); err != nil {
		// the only error: the app runs already (a handler provisioned
		// late), so its config does too
		started.r.use(started.c)
	}
	return nil
}

// configStarted is told Caddy's "started" event of a config: the relay's
// events go to that config's app from then on.
type configStarted struct {
	r *relayEvents
	c *configEvents
}

func (s configStarted) Handle(context.Context, caddy.Event) error {
	s.r.use(s.c)
	return nil
}

// Interface guard
var _ caddyevents.Handler = configStarted{}
