package dedupe

import (
	"sync/atomic"
	"time"
)

// limits holds a store's window and backlog bound. A config reload changes
// them while the store stays open, so they are read atomically on each use.
type limits struct {
	window atomic.Int64 // nanoseconds
	max    atomic.Int64
}

// SetLimits implements Store.
func (l *limits) SetLimits(window time.Duration, maxBacklog int) {
	l.window.Store(int64(window))
	l.max.Store(int64(maxBacklog))
}

func (l *limits) windowLen() time.Duration { return time.Duration(l.window.Load()) }
func (l *limits) maxBacklog() int          { return int(l.max.Load()) }
