package webhookrelay

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookrelay/caddy-webhook-relay/ops"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// metrics are package-level: Caddy gives every config its own registry, and
// the same collectors are registered in each, so counts survive reloads.
var metrics = struct {
	once       sync.Once
	requests   *prometheus.CounterVec
	deliveries *prometheus.CounterVec
	ackSeconds *prometheus.HistogramVec
	delSeconds *prometheus.HistogramVec
	deadDrops  *prometheus.CounterVec
	filterErrs *prometheus.CounterVec
	state      *stateCollector
}{}

const metricsNamespace, metricsSubsystem = "caddy", "webhook_relay"

func initMetrics() {
	metrics.once.Do(func() {
		metrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "requests_total",
			Help: "Webhook requests received, by outcome of the ack path.",
		}, []string{"relay", "outcome"})
		metrics.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "deliveries_total",
			Help: "Delivery attempts to a destination, by result (success, retry, dead).",
		}, []string{"relay", "destination", "result"})
		metrics.ackSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name:    "ack_duration_seconds",
			Help:    "Time from the start of the ack path to the answer, for answered requests.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"relay"})
		metrics.delSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name:    "delivery_duration_seconds",
			Help:    "Time a destination took to answer one delivery attempt.",
			Buckets: prometheus.DefBuckets,
		}, []string{"relay", "destination"})
		metrics.deadDrops = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "dead_dropped_total",
			Help: "Dead letters removed because of max_dead, dead_retention or max_stored.",
		}, []string{"relay"})
		metrics.filterErrs = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "filter_errors_total",
			Help: "Payloads a destination's filter could not be evaluated on (counted as no match).",
		}, []string{"relay", "destination"})
		metrics.state = &stateCollector{
			backlog: prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_backlog",
				"Payloads acknowledged and not yet delivered.", []string{"relay"}, nil),
			oldest: prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_oldest_queued_age_seconds",
				"Age of the oldest payload waiting for delivery; 0 when none waits.", []string{"relay"}, nil),
			dead: prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_dead_letters",
				"Payloads that gave up and wait to be replayed or deleted.", []string{"relay"}, nil),
			inFlight: prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_in_flight",
				"Delivery attempts running now.", []string{"relay"}, nil),
			keys: prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_keys",
				"Dedupe markers held: keys seen within the window.", []string{"relay"}, nil),
			memory: prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_memory_bytes",
				"Bytes of bodies held in memory now (received and being delivered), bounded by max_memory.", []string{"relay"}, nil),
			stored: prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_stored_bytes",
				"Bytes the store keeps of queued payloads and dead letters (bodies and kept headers), bounded by max_stored.", []string{"relay"}, nil),
			paused: prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_paused",
				"1 while the destination is paused (payloads are accepted and wait; nothing is attempted), else 0.", []string{"relay", "destination"}, nil),
		}
	})
}

// registerMetrics puts the collectors in a config's registry; registering
// them again in the same registry is expected and harmless.
func registerMetrics(registry *prometheus.Registry) error {
	initMetrics()
	if registry == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		metrics.requests, metrics.deliveries, metrics.ackSeconds, metrics.delSeconds, metrics.deadDrops, metrics.filterErrs, metrics.state,
	} {
		if err := registry.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// relayMetrics holds one relay's series, looked up once instead of per
// request, and its counters.
type relayMetrics struct {
	name       string
	outcomes   map[string]prometheus.Counter
	ackSeconds prometheus.Observer
	deadDrops  prometheus.Counter
	counters   *relayCounters
}

// newRelayMetrics looks up the series of relay name.
func newRelayMetrics(name string) *relayMetrics {
	initMetrics()
	m := &relayMetrics{
		name:       name,
		outcomes:   make(map[string]prometheus.Counter),
		ackSeconds: metrics.ackSeconds.WithLabelValues(name),
		deadDrops:  metrics.deadDrops.WithLabelValues(name),
		counters:   countersFor(name),
	}
	for _, o := range outcomes {
		m.outcomes[o] = metrics.requests.WithLabelValues(name, o)
	}
	return m
}

// destMetrics holds the series of one destination of a relay.
type destMetrics struct {
	results    map[string]prometheus.Counter
	delSeconds prometheus.Observer
	// filterErrors counts the destination's filter evaluations that failed.
	filterErrors prometheus.Counter
	counters     *relayCounters // the relay's
}

// destination looks up the series of the relay's destination dest.
func (m *relayMetrics) destination(dest string) *destMetrics {
	d := &destMetrics{
		results:      make(map[string]prometheus.Counter),
		delSeconds:   metrics.delSeconds.WithLabelValues(m.name, dest),
		filterErrors: metrics.filterErrs.WithLabelValues(m.name, dest),
		counters:     m.counters,
	}
	for _, r := range deliveryResults {
		d.results[r] = metrics.deliveries.WithLabelValues(m.name, dest, r)
	}
	return d
}

// request counts one answered request of the ack path.
func (m *relayMetrics) request(outcome string, took time.Duration) {
	m.outcomes[outcome].Inc()
	m.counters.requests.add(outcome)
	m.ackSeconds.Observe(took.Seconds())
}

// delivery counts one delivery attempt (the engine's Observe).
func (m *destMetrics) delivery(result string, took time.Duration) {
	m.results[result].Inc()
	m.counters.deliveries.add(result)
	m.delSeconds.Observe(took.Seconds())
}

// deadDropped counts a dead letter removed by the bounds (the engine's
// DeadDropped).
func (m *relayMetrics) deadDropped(*queue.Entry) {
	m.deadDrops.Inc()
	m.counters.deadDropped.Add(1)
}

// deadEvicted counts n dead letters that gave way to a new payload under
// max_stored (the store's Evicted).
func (m *relayMetrics) deadEvicted(n int) {
	m.deadDrops.Add(float64(n))
	m.counters.deadDropped.Add(int64(n))
}

// totals are the relay's counts since Caddy started.
func (m *relayMetrics) totals() ops.Totals { return m.counters.totals() }

// stateCollector reads backlog, oldest age and dead letters from each open
// store when metrics are scraped, so the numbers are never stale and span
// every process sharing a store.
type stateCollector struct {
	backlog, oldest, dead, inFlight, keys, memory, stored, paused *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.backlog
	ch <- c.oldest
	ch <- c.dead
	ch <- c.inFlight
	ch <- c.keys
	ch <- c.memory
	ch <- c.stored
	ch <- c.paused
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	seen := make(map[string]bool)
	for _, r := range slices.Backward(ops.Relays()) {
		if seen[r.Name()] {
			continue // during a store change two generations share a name: the newest counts
		}
		seen[r.Name()] = true
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s := ops.Status(ctx, r)
		cancel()
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(s.InFlight), s.Name)
		ch <- prometheus.MustNewConstMetric(c.memory, prometheus.GaugeValue, float64(s.MemoryBytes), s.Name)
		if s.Error != "" {
			continue
		}
		age := 0.0
		if s.OldestQueued != nil {
			age = max(time.Since(*s.OldestQueued).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(s.Backlog), s.Name)
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age, s.Name)
		ch <- prometheus.MustNewConstMetric(c.dead, prometheus.GaugeValue, float64(s.DeadLetters), s.Name)
		ch <- prometheus.MustNewConstMetric(c.keys, prometheus.GaugeValue, float64(s.Keys), s.Name)
		ch <- prometheus.MustNewConstMetric(c.stored, prometheus.GaugeValue, float64(s.StoredBytes), s.Name)
		for _, d := range s.Destinations {
			v := 0.0
			if d.Paused {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, v, s.Name, d.Name)
		}
	}
}
