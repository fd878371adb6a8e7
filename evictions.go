package webhookrelay

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// evictionQuiet is how long without a dead letter giving way under
// max_stored ends an episode: the next one is logged again.
const evictionQuiet = time.Minute

// evictions reports the dead letters a store removed to make room for new
// payloads under max_stored (queue.Options.Evicted): each one is counted,
// and an episode of them is logged once, not once per letter.
type evictions struct {
	log   *zap.Logger
	count func(n int)
	now   func() time.Time

	mu   sync.Mutex
	last time.Time // the last removal
}

func newEvictions(log *zap.Logger, count func(n int)) *evictions {
	return &evictions{log: log, count: count, now: time.Now}
}

// evicted is queue.Options.Evicted.
func (v *evictions) evicted(n int) {
	if v.count != nil {
		v.count(n)
	}
	v.mu.Lock()
	now := v.now()
	first := v.last.IsZero() || now.Sub(v.last) > evictionQuiet
	v.last = now
	v.mu.Unlock()
	if first {
		v.log.Warn("max_stored reached: the oldest dead letters give way to new payloads; "+
			"each is counted in caddy_webhook_relay_dead_dropped_total, and this is logged again "+
			"after a minute without removals (raise max_stored, or replay or delete dead letters)",
			zap.Int("removed", n))
	}
}
