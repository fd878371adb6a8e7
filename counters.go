package webhookrelay

import (
	"maps"
	"sync"
	"sync/atomic"

	"github.com/hookrelay/caddy-webhook-relay/delivery"
	"github.com/hookrelay/caddy-webhook-relay/ops"
)

// relayCounters are one relay's totals since Caddy started, counted where
// the Prometheus counters are, so that the status reads them from the
// relay's own state. They are kept by name, as the Prometheus series are,
// so a relay that reopens its store keeps counting.
type relayCounters struct {
	requests    tally // by outcome
	deliveries  tally // by result
	deadDropped atomic.Int64
}

var countersByName sync.Map // relay name -> *relayCounters

// outcomes are every outcome of the ack path.
var outcomes = []string{OutcomeAccepted, OutcomeDuplicate, OutcomeUnauthorized, OutcomeTooLarge,
	OutcomeBadRequest, OutcomeTimeout, OutcomeUnavailable, OutcomeMethodNotAllowed, OutcomeChallenge, OutcomeIgnored}

// deliveryResults are every result of a delivery attempt.
var deliveryResults = []string{delivery.ResultSuccess, delivery.ResultRetry, delivery.ResultDead}

// countersFor is the counters of the relay called name.
func countersFor(name string) *relayCounters {
	if c, ok := countersByName.Load(name); ok {
		return c.(*relayCounters)
	}
	c, _ := countersByName.LoadOrStore(name, &relayCounters{
		requests:   newTally(outcomes),
		deliveries: newTally(deliveryResults),
	})
	return c.(*relayCounters)
}

func (c *relayCounters) totals() ops.Totals {
	return ops.Totals{Requests: c.requests.read(), Deliveries: c.deliveries.read(), DeadDropped: c.deadDropped.Load()}
}

// tally counts events by names fixed when it is made.
type tally map[string]*atomic.Int64

func newTally(names []string) tally {
	t := make(tally, len(names))
	for _, n := range names {
		t[n] = new(atomic.Int64)
	}
	return t
}

func (t tally) add(name string) { t[name].Add(1) }

func (t tally) read() map[string]int64 {
	out := make(map[string]int64, len(t))
	for n, v := range maps.All(t) {
		out[n] = v.Load()
	}
	return out
}
