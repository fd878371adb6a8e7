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
	// history: how long a payload's record is kept once done (ns; 0: no records)
	history atomic.Int64
}

// SetHistory implements Store.
func (l *Limits) SetHistory(d time.Duration) { l.history.Store(int64(d)) }

// History is how long a payload's record and body are kept after its last
// delivery was done; 0 means no records are kept.
func (l *Limits) History() time.Duration { return time.Duration(l.history.Load()) }

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
