package queue

import (
	"sync/atomic"
	"time"
)

// Limits holds a store's window, backlog bound and stored-bytes bound. A config reload changes
// them while the store stays open, so they are read atomically on each use.
// Stores embed it to implement SetLimits.
type Limits struct {
	window atomic.Int64 // nanoseconds
	max    atomic.Int64
	stored atomic.Int64
}

// SetLimits implements Store.
func (l *Limits) SetLimits(window time.Duration, maxBacklog int) {
	l.window.Store(int64(window))
	l.max.Store(int64(maxBacklog))
}

// Window is how long a key stays seen after it was admitted.
func (l *Limits) Window() time.Duration { return time.Duration(l.window.Load()) }

// MaxBacklog is the most payloads the queue may hold; 0 means no bound.
func (l *Limits) MaxBacklog() int { return int(l.max.Load()) }

// SetMaxStored implements Store.
func (l *Limits) SetMaxStored(maxStored int64) { l.stored.Store(maxStored) }

// MaxStored is the most bytes the store may keep; 0 means no bound.
func (l *Limits) MaxStored() int64 { return l.stored.Load() }
