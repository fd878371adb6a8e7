// Package budget bounds the bytes of webhook bodies one relay holds in
// memory: bodies being received and admitted on the ack path, and bodies
// loaded from the store to be sent upstream.
//
// Delivery may never take the whole budget while it holds a body already:
// it leaves a reserve for intake (normally max_body), so that a backlog
// being delivered never starves new webhooks of memory. A single body larger
// than what delivery may hold still goes out, alone, when it fits.
package budget

import (
	"context"
	"sync"
)

// Budget is a byte budget shared by intake and delivery. It is safe for
// concurrent use. The zero value is not usable; call New.
type Budget struct {
	mu         sync.Mutex
	limit      int64
	reserve    int64
	used       int64         // bytes held by intake and delivery together
	delivering int64         // of which delivery holds these
	freed      chan struct{} // closed, and replaced, when bytes are given back to a waiter
	waiting    int           // TakeForDelivery calls waiting on freed
}

// New returns a budget of limit bytes, of which delivery leaves reserve
// for intake.
func New(limit, reserve int64) *Budget {
	b := &Budget{freed: make(chan struct{})}
	b.SetLimits(limit, reserve)
	return b
}

// SetLimits changes the budget (a config reload). Bytes already taken stay
// taken; a smaller limit only refuses new takes until enough is given back.
func (b *Budget) SetLimits(limit, reserve int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limit, b.reserve = limit, min(reserve, limit)
	b.wakeLocked()
}

// TryTake takes n bytes for a body being received, if they fit; the caller
// answers 503 when they do not.
func (b *Budget) TryTake(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

// Give returns n bytes taken with TryTake.
func (b *Budget) Give(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	b.wakeLocked()
}

// TakeForDelivery waits until n bytes fit in what delivery may hold, takes
// them, and returns nil; or returns ctx's error. A body larger than the
// whole budget (queued before a reload made the budget smaller) waits until
// nothing else is held, then goes out alone.
func (b *Budget) TakeForDelivery(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		need := min(n, b.limit)
		fits := b.used+need <= b.limit &&
			(b.delivering+need <= b.limit-b.reserve || b.delivering == 0)
		if fits {
			b.used += n
			b.delivering += n
			b.mu.Unlock()
			return nil
		}
		freed := b.freed
		b.waiting++
		b.mu.Unlock()
		var err error
		select {
		case <-freed:
		case <-ctx.Done():
			err = ctx.Err()
		}
		b.mu.Lock()
		b.waiting--
		b.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// GiveFromDelivery returns n bytes taken with TakeForDelivery.
func (b *Budget) GiveFromDelivery(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	b.delivering -= n
	b.wakeLocked()
}

// Used reports the bytes held now.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// wakeLocked wakes the waiting TakeForDelivery calls. With none waiting,
// the usual case on the ack path, there is no channel to close and replace.
func (b *Budget) wakeLocked() {
	if b.waiting == 0 {
		return
	}
	close(b.freed)
	b.freed = make(chan struct{})
}
