// Package budget bounds the bytes of webhook bodies one relay holds in
// memory: bodies being received and admitted on the ack path, and bodies
// loaded from the store to be sent upstream.
//
// Three shares keep one use of the budget from starving another:
//
//   - Delivery may never take the whole budget while it holds a body
//     already: it leaves ForIntake (normally max_body) to intake, so that a
//     backlog being delivered never starves new webhooks of memory. A
//     single body larger than what delivery may hold still goes out, alone,
//     when it fits.
//   - Intake never takes ForDelivery: however many bodies arrive at once,
//     delivery goes on.
//   - One key (a client address) holds at most Share while its bodies
//     arrive, so a few slow senders cannot take what everyone else needs.
package budget

import (
	"context"
	"errors"
	"sync"
)

// Limits are a budget's sizes, in bytes.
type Limits struct {
	// Total is the whole budget: max_memory.
	Total int64
	// ForIntake is what delivery, once it holds a body, leaves to intake.
	ForIntake int64
	// ForDelivery is what intake never takes.
	ForDelivery int64
	// Share is the most one key holds for intake; 0 is no share (the
	// whole of what intake may take).
	Share int64
}

// RelayLimits are a relay's limits for max_memory and max_body: delivery
// leaves max_body to intake; intake leaves a quarter of max_memory, but at
// least max_body, to delivery (so that a body of any size goes out while
// intake is full); one client holds at most an eighth of max_memory, but at
// least max_body (so that anyone can send one webhook of max_body). When
// max_memory is less than twice max_body, intake keeps max_body and
// delivery gets what is left.
func RelayLimits(maxMemory, maxBody int64) Limits {
	forDelivery := min(max(maxMemory/4, maxBody), maxMemory-maxBody)
	return Limits{
		Total:       maxMemory,
		ForIntake:   maxBody,
		ForDelivery: max(forDelivery, 0),
		Share:       min(max(maxMemory/8, maxBody), maxMemory-max(forDelivery, 0)),
	}
}

// Why Take refuses.
var (
	// ErrShare: the key holds its share already.
	ErrShare = errors.New("budget: the client's share is taken")
	// ErrFull: what intake may hold is taken.
	ErrFull = errors.New("budget: the budget is taken")
)

// Budget is a byte budget shared by intake and delivery. It is safe for
// concurrent use. The zero value is not usable; call New.
type Budget struct {
	mu         sync.Mutex
	limits     Limits
	used       int64            // bytes held by intake and delivery together
	delivering int64            // of which delivery holds these
	byKey      map[string]int64 // intake's bytes by key; a key holding none is absent
	freed      chan struct{}    // closed, and replaced, when bytes are given back to a waiter
	waiting    int              // TakeForDelivery calls waiting on freed
}

// New returns a budget of limit bytes, of which delivery leaves reserve
// for intake; intake may take all of it, in any share, until SetLimits
// says otherwise.
func New(limit, reserve int64) *Budget {
	b := &Budget{freed: make(chan struct{}), byKey: make(map[string]int64)}
	b.SetLimits(Limits{Total: limit, ForIntake: reserve})
	return b
}

// SetLimits changes the budget (a config reload). Bytes already taken stay
// taken; smaller limits only refuse new takes until enough is given back.
func (b *Budget) SetLimits(l Limits) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l.ForIntake = min(max(l.ForIntake, 0), l.Total)
	l.ForDelivery = min(max(l.ForDelivery, 0), l.Total)
	b.limits = l
	b.wakeLocked()
}

// Take takes n bytes for a body key is sending, if they fit in the budget,
// in what intake may hold and in key's share; the caller answers 503 when
// they do not: ErrShare when key holds its share (that client only),
// ErrFull otherwise.
func (b *Budget) Take(key string, n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.limits
	held := b.byKey[key]
	if l.Share > 0 && held+n > l.Share {
		return ErrShare
	}
	if b.used+n > l.Total || b.used-b.delivering+n > l.Total-l.ForDelivery {
		return ErrFull
	}
	b.used += n
	b.byKey[key] = held + n
	return nil
}

// Give returns n bytes key took with Take.
func (b *Budget) Give(key string, n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if held := b.byKey[key] - n; held > 0 {
		b.byKey[key] = held
	} else {
		delete(b.byKey, key)
	}
	b.wakeLocked()
}

// TakeForDelivery waits until n bytes fit in what delivery may hold, takes
// them, and returns nil; or returns ctx's error. A body larger than the
// whole budget (queued before a reload made the budget smaller) waits until
// nothing else is held, then goes out alone.
func (b *Budget) TakeForDelivery(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		limit, reserve := b.limits.Total, b.limits.ForIntake
		need := min(n, limit)
		fits := b.used+need <= limit &&
			(b.delivering+need <= limit-reserve || b.delivering == 0)
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

// Held reports the bytes key holds for intake now.
func (b *Budget) Held(key string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.byKey[key]
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

// Limits reports the budget's limits.
func (b *Budget) Limits() Limits {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limits
}
