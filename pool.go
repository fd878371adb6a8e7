package webhookrelay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/delivery"
	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/internal/faultlog"
	"github.com/hookrelay/caddy-webhook-relay/ops"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/ratelimit"
)

// relayPool holds each relay's open store and delivery engine across config
// reloads: Caddy provisions the new config before it cleans up the old one,
// so the reference count never drops to zero in a reload.
var relayPool = caddy.NewUsagePool()

// shutdownGrace bounds how long running deliveries may finish when a relay
// stops; whatever is left stays queued in the store.
const shutdownGrace = 5 * time.Second

// relayConfig is what the pool needs of one config of a relay: the
// settings its store, memory budget and deliveries apply.
type relayConfig struct {
	settings *delivery.Settings // the deliveries' (upstream, dead-letter bounds, ...)
	// destination names the one destination the settings deliver to, and
	// observe counts its attempts under that name.
	destination string
	observe     func(result string, took time.Duration)
	window      time.Duration
	maxBacklog  int
	maxMemory   int64
	maxBody     int64
	maxStored   int64
}

// relayOpening is what opening a relay takes besides its first config:
// its store module, and where it reports what it counts.
type relayOpening struct {
	name    string
	backend queue.Backend
	opts    queue.Options
	logger  *zap.Logger
	// deadDropped is told every dead letter removed by the bounds; totals
	// reads the counts since Caddy started. (Delivery attempts are counted
	// by the newest config's relayConfig.observe.)
	deadDropped func(*queue.Entry)
	// deadEvicted is told how many dead letters gave way to a new payload
	// under max_stored.
	deadEvicted func(n int)
	totals      func() ops.Totals
}

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
	totals        func() ops.Totals
	events        relayEvents // the deliveries' Caddy events, to the running config's events app

	mu      sync.Mutex
	configs []*relayConfig // configs using this relay, newest last
	current atomic.Pointer[relayConfig]
	// limiter is the destination's rate limiter, kept across reloads that
	// keep its destination and rate, so that a reload grants no extra start.
	limiterMu sync.Mutex
	limiter   ratelimit.Limiter
	limiterOf string // destination and rate it limits
}

// acquireRelay opens the relay under key, or finds it open, and registers
// it with the operations while it is open.
func acquireRelay(key string, o relayOpening, cfg *relayConfig) (*pooledRelay, error) {
	storeConfig, _ := json.Marshal(o.backend)
	val, loaded, err := relayPool.LoadOrNew(key, func() (caddy.Destructor, error) {
		opts := o.opts
		opts.Evicted = newEvictions(o.logger.With(zap.String("relay", o.name)), o.deadEvicted).evicted
		store, err := o.backend.OpenStore(o.name, opts, o.logger)
		if err != nil {
			return nil, err
		}
		r := &pooledRelay{name: o.name, storeIdentity: o.backend.StoreIdentity(o.name), store: store,
			storeConfig: storeConfig, totals: o.totals, memory: budget.New(cfg.maxMemory, cfg.maxBody)}
		r.current.Store(cfg)
		r.setLimiter(cfg)
		r.engine = delivery.Start(delivery.Config{
			Store:       store,
			Settings:    cfg.settings,
			Relay:       o.name,
			Budget:      r.memory,
			Logger:      o.logger.With(zap.String("relay", o.name)),
			Observe:     r.observe,
			DeadDropped: o.deadDropped,
			Events:      &r.events,
		})
		ops.Register(r)
		return r, nil
	})
	if err != nil {
		return nil, fmt.Errorf("relay %s: opening store: %v", o.name, err)
	}
	r := val.(*pooledRelay)
	if loaded && !bytes.Equal(r.storeConfig, storeConfig) {
		// Reopening would interrupt the queue (and a bbolt file cannot be
		// opened twice), so the open store stays as it is.
		o.logger.Warn("store options changed (e.g. timeouts, durable_ack, credentials); they take effect when Caddy restarts",
			zap.String("relay", o.name))
	}
	return r, nil
}

// attach makes cfg's settings the ones the store and the deliveries use.
func (r *pooledRelay) attach(cfg *relayConfig) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.configs = append(r.configs, cfg)
	r.apply(cfg)
}

func (r *pooledRelay) apply(cfg *relayConfig) {
	r.setLimiter(cfg)
	r.current.Store(cfg)
	r.store.SetLimits(cfg.window, cfg.maxBacklog)
	r.store.SetMaxStored(cfg.maxStored)
	r.memory.SetLimits(budget.RelayLimits(cfg.maxMemory, cfg.maxBody))
	r.engine.SetSettings(cfg.settings)
}

// observe counts a delivery attempt under the newest config's destination.
func (r *pooledRelay) observe(result string, took time.Duration) {
	if cfg := r.current.Load(); cfg != nil && cfg.observe != nil {
		cfg.observe(result, took)
	}
}

// rateLimited is a store that keeps a destination's rate itself, shared by
// every process on it (queue/redis.Store).
type rateLimited interface {
	Limiter(destination string, rate ratelimit.Rate) ratelimit.Limiter
}

// setLimiter gives cfg's settings the limiter of their destination's rate:
// the store's, shared by every instance, when it keeps one (Redis), else
// one of this process. The limiter already in use is kept when the
// destination and rate are the same.
func (r *pooledRelay) setLimiter(cfg *relayConfig) {
	// The settings are written only when they change: a config's settings
	// get their limiter when it is attached, before the engine sees them.
	s := cfg.settings
	if s.Rate.IsZero() {
		return
	}
	of := cfg.destination + " " + s.Rate.String()
	r.limiterMu.Lock()
	defer r.limiterMu.Unlock()
	if r.limiter == nil || r.limiterOf != of {
		if rl, ok := r.store.(rateLimited); ok {
			r.limiter = rl.Limiter(cfg.destination, s.Rate)
		} else {
			r.limiter = ratelimit.NewLocal(s.Rate, nil)
		}
		r.limiterOf = of
	}
	if s.Limiter != r.limiter {
		s.Limiter = r.limiter
	}
}

// detach forgets cfg; the newest remaining config's settings apply again,
// so a config that failed to load does not leave its settings behind.
func (r *pooledRelay) detach(cfg *relayConfig) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, other := range r.configs {
		if other == cfg {
			r.configs = append(r.configs[:i], r.configs[i+1:]...)
			break
		}
	}
	if n := len(r.configs); n > 0 {
		r.apply(r.configs[n-1])
	}
}

// Destruct stops the deliveries and closes the store, when the last config
// using this relay is gone.
func (r *pooledRelay) Destruct() error {
	ops.Unregister(r)
	r.engine.Stop(shutdownGrace)
	return r.store.Close()
}

// The pooled relay as the operations see it (ops.Relay).

func (r *pooledRelay) Name() string          { return r.name }
func (r *pooledRelay) StoreIdentity() string { return r.storeIdentity }
func (r *pooledRelay) Store() ops.Store      { return r.store }
func (r *pooledRelay) InFlight() int         { return r.engine.InFlight() }
func (r *pooledRelay) MemoryUsed() int64     { return r.memory.Used() }
func (r *pooledRelay) Wake()                 { r.engine.Wake() }
func (r *pooledRelay) Totals() ops.Totals    { return r.totals() }

// Destinations are the newest config's: today the one, named by its
// settings.
func (r *pooledRelay) Destinations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.configs)
	if n == 0 {
		return nil
	}
	name := r.configs[n-1].settings.Destination
	if name == "" {
		name = delivery.DefaultDestination
	}
	return []string{name}
}

// Bounds are the newest config's.
func (r *pooledRelay) Bounds() (ops.Bounds, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.configs)
	if n == 0 {
		return ops.Bounds{}, false
	}
	cfg := r.configs[n-1]
	return ops.Bounds{
		UpstreamHost:  cfg.settings.Upstream.Host,
		MaxMemory:     cfg.maxMemory,
		MaxDead:       cfg.settings.MaxDead,
		MaxStored:     cfg.maxStored,
		DeadRetention: cfg.settings.DeadRetention,
	}, true
}

// Interface guards
var (
	_ caddy.Destructor = (*pooledRelay)(nil)
	_ ops.Relay        = (*pooledRelay)(nil)
)
