package redis

import (
	"container/list"
	"context"
	"sync"
)

// bodyBytesInFlight bounds the bytes of bodies on their way to or from
// Redis at once, over all of a store's admits and body reads: staged body
// SETs and body chunks beyond the first (bodies small enough to travel in
// the shared pipelines are bounded by pipelineBytes there). Redis reads a
// large argument and writes a large reply as fast as the sockets let it,
// one event-loop turn for every client with data waiting; with sixteen 6
// MiB bodies arriving at once, one turn took it hundreds of milliseconds,
// and every other client (a PING, another relay's admit) waited that long.
// A body larger than the bound goes alone.
const bodyBytesInFlight = 4 << 20

// byteBound is a weighted semaphore of bytes, first come first served.
type byteBound struct {
	mu      sync.Mutex
	limit   int64
	used    int64
	waiters list.List // of *boundWaiter
}

type boundWaiter struct {
	n     int64
	ready chan struct{}
}

// take waits until n bytes (at most the whole bound) are free and takes
// them. It returns what it took, to give back with give, or ctx's error.
func (b *byteBound) take(ctx context.Context, n int64) (int64, error) {
	n = min(n, b.limit)
	b.mu.Lock()
	if b.waiters.Len() == 0 && b.used+n <= b.limit {
		b.used += n
		b.mu.Unlock()
		return n, nil
	}
	w := &boundWaiter{n: n, ready: make(chan struct{})}
	elem := b.waiters.PushBack(w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return n, nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready: // granted meanwhile
			b.used -= n
		default:
			b.waiters.Remove(elem)
		}
		b.wakeLocked()
		b.mu.Unlock()
		return 0, ctx.Err()
	}
}

// give returns n bytes taken with take.
func (b *byteBound) give(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.wakeLocked()
	b.mu.Unlock()
}

// wakeLocked lets in the waiters at the front whose bytes fit, in order.
func (b *byteBound) wakeLocked() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*boundWaiter)
		if b.used+w.n > b.limit {
			return
		}
		b.used += w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
}
