package webhookrelay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.opentelemetry.io/otel/trace"
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
	dests      []*destConfig // in the config's order
	window     time.Duration
	maxBacklog int
	maxMemory  int64
	maxBody    int64
	maxStored  int64
	history    time.Duration
}

// destConfig is one destination of a config: what its deliveries apply.
type destConfig struct {
	name     string
	settings *delivery.Settings // upstream, attempts, dead-letter bounds, rate, ...
	// observe counts its attempts under its name.
	observe func(result string, took time.Duration)
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
// the delivery engines working on its lanes, one per destination.
type pooledRelay struct {
	name          string
	storeIdentity string
	store         queue.Store
	memory        *budget.Budget   // bodies in memory, intake and delivery together
	storeErr      faultlog.Tracker // admit failures, logged once per outage
	storeConfig   []byte           // the store module's settings it was opened with
	totals        func() ops.Totals
	events        relayEvents // the deliveries' Caddy events, to the running config's events app

	logger      *zap.Logger
	deadDropped func(*queue.Entry)

	mu      sync.Mutex
	configs []*relayConfig   // configs using this relay, newest last
	lanes   map[string]*lane // by destination, the newest config's
	// running are the lanes' engines, for the ack path to wake without
	// taking mu.
	running atomic.Pointer[[]*delivery.Engine]
	// stopping counts the engines of destinations a reload removed, which
	// finish their attempts in the background; Destruct waits for them.
	stopping sync.WaitGroup
}

// lane is one destination's delivery engine, kept across reloads that keep
// the destination.
type lane struct {
	engine  *delivery.Engine
	current atomic.Pointer[destConfig]
	// limiter is the destination's rate limiter, kept across reloads that
	// keep its rate, so that a reload grants no extra start.
	limiter   ratelimit.Limiter
	limiterOf string // the rate it limits to
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
			storeConfig: storeConfig, totals: o.totals, memory: budget.New(cfg.maxMemory, cfg.maxBody),
			logger: o.logger.With(zap.String("relay", o.name)), deadDropped: o.deadDropped,
			lanes: make(map[string]*lane)}
		r.mu.Lock()
		r.startLanes(cfg)
		r.mu.Unlock()
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
	r.store.SetLimits(cfg.window, cfg.maxBacklog)
	r.store.SetMaxStored(cfg.maxStored)
	r.store.SetHistory(cfg.history)
	r.memory.SetLimits(budget.RelayLimits(cfg.maxMemory, cfg.maxBody))
	r.startLanes(cfg)
}

// startLanes gives each of cfg's destinations an engine on its lane of the
// store, keeps the engines of the destinations it keeps (with its
// settings), and stops the others: their deliveries stay queued in the
// store until a config names the destination again. It must be called
// with r.mu held.
func (r *pooledRelay) startLanes(cfg *relayConfig) {
	keep := make(map[string]bool, len(cfg.dests))
	for _, d := range cfg.dests {
		keep[d.name] = true
		l, ok := r.lanes[d.name]
		if !ok {
			l = &lane{}
		}
		r.setLimiter(l, d)
		l.current.Store(d)
		if ok {
			l.engine.SetSettings(d.settings)
			continue
		}
		l.engine = delivery.Start(delivery.Config{
			Store:       r.store.Lane(d.name),
			Settings:    d.settings,
			Relay:       r.name,
			Budget:      r.memory,
			Logger:      r.logger,
			Observe:     l.observe,
			DeadDropped: r.deadDropped,
			Events:      &r.events,
		})
		r.lanes[d.name] = l
	}
	for name, l := range r.lanes {
		if keep[name] {
			continue
		}
		delete(r.lanes, name)
		r.stopping.Add(1)
		go func() {
			defer r.stopping.Done()
			l.engine.Stop(shutdownGrace)
		}()
	}
	running := make([]*delivery.Engine, 0, len(r.lanes))
	for _, l := range r.lanes {
		running = append(running, l.engine)
	}
	r.running.Store(&running)
}

// observe counts a delivery attempt under the lane's destination.
func (l *lane) observe(result string, took time.Duration) {
	if d := l.current.Load(); d != nil && d.observe != nil {
		d.observe(result, took)
	}
}

// rateLimited is a store that keeps a destination's rate itself, shared by
// every process on it (queue/redis.Store).
type rateLimited interface {
	Limiter(destination string, rate ratelimit.Rate) ratelimit.Limiter
}

// setLimiter gives d's settings the limiter of its rate: the store's,
// shared by every instance, when it keeps one (Redis), else one of this
// process. The lane's limiter is kept when the rate is the same. It must
// be called with r.mu held.
func (r *pooledRelay) setLimiter(l *lane, d *destConfig) {
	// The settings are written only when they change: a config's settings
	// get their limiter when it is attached, before the engine sees them.
	s := d.settings
	if s.Rate.IsZero() {
		return
	}
	of := s.Rate.String()
	if l.limiter == nil || l.limiterOf != of {
		if rl, ok := r.store.(rateLimited); ok {
			l.limiter = rl.Limiter(d.name, s.Rate)
		} else {
			l.limiter = ratelimit.NewLocal(s.Rate, nil)
		}
		l.limiterOf = of
	}
	if s.Limiter != l.limiter {
		s.Limiter = l.limiter
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
	r.mu.Lock()
	var wg sync.WaitGroup
	for _, l := range r.lanes {
		wg.Go(func() { l.engine.Stop(shutdownGrace) })
	}
	r.mu.Unlock()
	wg.Wait()
	r.stopping.Wait()
	return r.store.Close()
}

// engines are the running engines, the newest config's destinations'.
func (r *pooledRelay) engines() []*delivery.Engine {
	if p := r.running.Load(); p != nil {
		return *p
	}
	return nil
}

// The pooled relay as the operations see it (ops.Relay).

func (r *pooledRelay) Name() string          { return r.name }
func (r *pooledRelay) StoreIdentity() string { return r.storeIdentity }
func (r *pooledRelay) Store() ops.Store      { return r.store }
func (r *pooledRelay) MemoryUsed() int64     { return r.memory.Used() }
func (r *pooledRelay) Totals() ops.Totals    { return r.totals() }

// InFlight counts the attempts running now, every destination's.
func (r *pooledRelay) InFlight() int {
	n := 0
	for _, e := range r.engines() {
		n += e.InFlight()
	}
	return n
}

// useTracerProvider makes every destination's attempts record their spans
// through tp (delivery.Engine.UseTracerProvider).
func (r *pooledRelay) useTracerProvider(tp trace.TracerProvider) {
	for _, e := range r.engines() {
		e.UseTracerProvider(tp)
	}
}

// Wake wakes every destination's engine.
func (r *pooledRelay) Wake() {
	for _, e := range r.engines() {
		e.Wake()
	}
}

// Destinations are the newest config's, in its order.
func (r *pooledRelay) Destinations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.configs)
	if n == 0 {
		return nil
	}
	var out []string
	for _, d := range r.configs[n-1].dests {
		out = append(out, d.name)
	}
	return out
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
	hosts := make(map[string]string, len(cfg.dests))
	for _, d := range cfg.dests {
		hosts[d.name] = d.settings.Upstream.Host
	}
	first := cfg.dests[0].settings
	return ops.Bounds{
		UpstreamHost:  first.Upstream.Host,
		Hosts:         hosts,
		MaxMemory:     cfg.maxMemory,
		MaxDead:       first.MaxDead,
		MaxStored:     cfg.maxStored,
		DeadRetention: first.DeadRetention,
	}, true
}

// Interface guards
var (
	_ caddy.Destructor = (*pooledRelay)(nil)
	_ ops.Relay        = (*pooledRelay)(nil)
)
