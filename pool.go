package webhookrelay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/delivery"
	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/internal/faultlog"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// relayPool holds each relay's open store and delivery engine across config
// reloads: Caddy provisions the new config before it cleans up the old one,
// so the reference count never drops to zero in a reload.
var relayPool = caddy.NewUsagePool()

// shutdownGrace bounds how long running deliveries may finish when a relay
// stops; whatever is left stays queued in the store.
const shutdownGrace = 5 * time.Second

// pooledRelay is the part of a webhook_relay that outlives a config: the store and
// the delivery engine working on its queue.
type pooledRelay struct {
	name          string
	storeIdentity string
	store         queue.Store
	engine        *delivery.Engine
	memory        *budget.Budget   // bodies in memory, intake and delivery together
	storeErr      faultlog.Tracker // admit failures, logged once per outage
	storeConfig   []byte           // the store module's settings it was opened with

	mu       sync.Mutex
	handlers []*Handler // configs using this relay, newest last
}

func acquireRelay(key string, h *Handler, mod queue.Backend, opts queue.Options, logger *zap.Logger) (*pooledRelay, error) {
	name := h.Name
	storeConfig, _ := json.Marshal(mod)
	val, loaded, err := relayPool.LoadOrNew(key, func() (caddy.Destructor, error) {
		store, err := mod.OpenStore(name, opts, logger)
		if err != nil {
			return nil, err
		}
		r := &pooledRelay{name: name, storeIdentity: mod.StoreIdentity(name), store: store, storeConfig: storeConfig,
			memory: budget.New(h.MaxMemory, h.MaxBody)}
		r.engine = delivery.Start(delivery.Config{
			Store:       store,
			Settings:    h.settings,
			Budget:      r.memory,
			Logger:      logger.With(zap.String("relay", name)),
			Observe:     deliveryObserver(name),
			DeadDropped: deadDroppedObserver(name),
		})
		return r, nil
	})
	if err != nil {
		return nil, fmt.Errorf("relay %s: opening store: %v", name, err)
	}
	r := val.(*pooledRelay)
	if loaded && !bytes.Equal(r.storeConfig, storeConfig) {
		// Reopening would interrupt the queue (and a bbolt file cannot be
		// opened twice), so the open store stays as it is.
		logger.Warn("store options changed (e.g. timeouts, durable_ack, credentials); they take effect when Caddy restarts",
			zap.String("relay", name))
	}
	return r, nil
}

// attach makes h's settings the ones the store and the deliveries use.
func (r *pooledRelay) attach(h *Handler) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.handlers = append(r.handlers, h)
	r.apply(h)
}

func (r *pooledRelay) apply(h *Handler) {
	r.store.SetLimits(time.Duration(h.Window), h.MaxBacklog)
	r.memory.SetLimits(h.MaxMemory, h.MaxBody)
	r.engine.SetSettings(h.settings)
}

// detach forgets h; the newest remaining config's settings apply again, so a
// config that failed to load does not leave its settings behind.
func (r *pooledRelay) detach(h *Handler) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, other := range r.handlers {
		if other == h {
			r.handlers = append(r.handlers[:i], r.handlers[i+1:]...)
			break
		}
	}
	if n := len(r.handlers); n > 0 {
		r.apply(r.handlers[n-1])
	}
}

// newest is the handler of the newest config using this relay, or nil.
func (r *pooledRelay) newest() *Handler {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.handlers); n > 0 {
		return r.handlers[n-1]
	}
	return nil
}

// upstreamHost is the host deliveries go to under the newest config.
func (r *pooledRelay) upstreamHost() string {
	if h := r.newest(); h != nil {
		return h.settings.Upstream.Host
	}
	return ""
}

// Destruct stops the deliveries and closes the store, when the last config
// using this relay is gone.
func (r *pooledRelay) Destruct() error {
	r.engine.Stop(shutdownGrace)
	return r.store.Close()
}

// namesInUse tracks the relay names of each config being loaded, keyed by
// the config's context, so that two different relays cannot share a name.
var (
	namesMu    sync.Mutex
	namesInUse = make(map[context.Context]map[string]namedRelay)
)

// namedRelay is the handler that took a name, and its settings as JSON at
// that moment (loading the store module clears StoreRaw afterwards).
type namedRelay struct {
	h        *Handler
	settings []byte
}

// claimName registers h's name in its config. The same relay listed twice
// (one site block serving several addresses becomes one handler per server)
// has identical settings and may share the name; a different relay may not.
func claimName(ctx caddy.Context, h *Handler) error {
	namesMu.Lock()
	defer namesMu.Unlock()
	names := namesInUse[ctx.Context]
	if names == nil {
		names = make(map[string]namedRelay)
		namesInUse[ctx.Context] = names
	}
	settings, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if other, ok := names[h.Name]; ok && !bytes.Equal(other.settings, settings) {
		return fmt.Errorf("two webhook_relay handlers with different settings are both named %q "+
			"(an unnamed one is named %q): give each its own name", h.Name, DefaultName)
	} else if !ok {
		names[h.Name] = namedRelay{h: h, settings: settings}
	}
	return nil
}

func releaseName(ctx caddy.Context, h *Handler) {
	namesMu.Lock()
	defer namesMu.Unlock()
	names := namesInUse[ctx.Context]
	if names[h.Name].h == h {
		delete(names, h.Name)
	}
	if len(names) == 0 {
		delete(namesInUse, ctx.Context)
	}
}

// openRelays lists the relays open in this process.
func openRelays() []*pooledRelay {
	var out []*pooledRelay
	relayPool.Range(func(_, v any) bool {
		out = append(out, v.(*pooledRelay))
		return true
	})
	return out
}
