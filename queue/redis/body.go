package redis

import (
	"context"
	"errors"
	"fmt"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/queue"

	goredis "github.com/redis/go-redis/v9"
)

// A GET of megabytes holds Redis for milliseconds while it copies the
// reply, and a shared pipeline of them for as many times that. So a body is
// read firstChunk in the shared pipeline (most webhooks are smaller, and
// come back whole from that one command), and the rest bodyChunk a round
// trip, letting other clients in between.
const (
	firstChunk = 64 << 10
	bodyChunk  = 256 << 10
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

// takeBodyBytes waits until n more bytes of bodies may be on their way, at
// most the whole bound (a larger body goes alone, once nothing else is on
// its way), first come first served. It returns what gives them back.
func (r *Store) takeBodyBytes(ctx context.Context, n int) (release func(), err error) {
	w := min(int64(n), bodyBytesInFlight) // Acquire of more than the bound would wait for ever
	if err := r.bodies.Acquire(ctx, w); err != nil {
		return nil, err
	}
	return func() { r.bodies.Release(w) }, nil
}

// readBody finishes a read of the body key that began with first, a
// GETRANGE of its first chunk: a shorter reply is the whole body. ok is
// false when there is no body key, or it went while being read. A body
// longer than the first chunk is read into a buffer of alloc, which it
// frees itself when it returns none.
func (r *Store) readBody(ctx context.Context, key string, first *goredis.StringCmd, alloc func(int) []byte) (body []byte, ok bool, err error) {
	if err := first.Err(); err != nil {
		return nil, false, err
	}
	head := first.Val()
	switch {
	case len(head) == 0: // an empty body, or none at all
		n, err := r.client.Exists(ctx, key).Result()
		if err != nil {
			return nil, false, err
		}
		return []byte{}, n == 1, nil
	case len(head) < firstChunk:
		return bytesOf(head), true, nil
	}
	size, err := r.client.StrLen(ctx, key).Result()
	if err != nil {
		return nil, false, err
	}
	n := int(size)
	switch {
	case n < len(head):
		return nil, false, nil // deleted meanwhile; bodies never change
	case n == len(head):
		return bytesOf(head), true, nil
	}
	buf := alloc(n)
	defer func() {
		if !ok || err != nil {
			bodybuf.Free(buf) // the local: every failing return set body to nil
			body = nil
		}
	}()
	body = buf
	off := copy(body, head)
	for off < n {
		end := min(off+bodyChunk, n)
		release, err := r.takeBodyBytes(ctx, end-off)
		if err != nil {
			return nil, false, err
		}
		chunk, err := r.client.GetRange(ctx, key, int64(off), int64(end-1)).Result()
		release()
		if err != nil {
			return nil, false, err
		}
		if len(chunk) != end-off {
			return nil, false, nil // deleted meanwhile
		}
		off += copy(body[off:], chunk)
	}
	return body, true, nil
}

// Body implements Store: lane "". Besides the body's first chunk, the one
// round trip that reads most bodies whole asks the dead index: the body
// key is kept while the entry is dead too, and the index tells the two
// apart.
func (r *Store) Body(ctx context.Context, id string) ([]byte, error) {
	return r.def.body(ctx, id, heapBuffer)
}

// heapBuffer is a buffer on Go's heap, for a body whose caller does not
// free it (Body, DeadEntry).
func heapBuffer(n int) []byte { return make([]byte, n) }

// ReadBody implements queue.BodyReader: lane "". A body longer than the
// first chunk is put together in a mapping of bodybuf rather than on the
// heap.
func (r *Store) ReadBody(ctx context.Context, id string) ([]byte, error) {
	return r.def.body(ctx, id, bodybuf.Alloc)
}

// Body implements queue.Claimer.
func (l *lane) Body(ctx context.Context, id string) ([]byte, error) {
	return l.body(ctx, id, heapBuffer)
}

// ReadBody implements queue.BodyReader.
func (l *lane) ReadBody(ctx context.Context, id string) ([]byte, error) {
	return l.body(ctx, id, bodybuf.Alloc)
}

// body reads the body of the lane's queued delivery id. The body is its
// payload's, kept while any delivery of the payload is queued or dead or
// its record is kept, so for a delivery that shares it (or with history
// on) the same round trip also asks the lane's stream whether this one is
// still queued.
func (l *lane) body(ctx context.Context, id string, alloc func(int) []byte) ([]byte, error) {
	r := l.r
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	key := r.bodyPrefix + payloadOf(id)
	// a body shared with other deliveries or a record outlives the delivery
	shared := fannedOut(id) || r.History() > 0
	sid, moved := r.movedTo(id)
	if !moved {
		sid = parseID(id)
	}
	var dead *goredis.FloatCmd
	var first *goredis.StringCmd
	var entry *goredis.XMessageSliceCmd
	var loc *goredis.StringCmd
	_, err := r.runCmds(ctx, smallCall+firstChunk, func(pipe goredis.Pipeliner, _ bool) []goredis.Cmder {
		dead, first = pipe.ZScore(ctx, r.deadIdx, id), pipe.GetRange(ctx, key, 0, firstChunk-1)
		if !shared {
			return []goredis.Cmder{dead, first}
		}
		entry, loc = pipe.XRangeN(ctx, l.stream, sid, sid, 1), pipe.HGet(ctx, r.loc, id)
		return []goredis.Cmder{dead, first, entry, loc}
	})
	if err == nil && shared {
		err = l.queued(ctx, sid, entry, loc)
		if errors.Is(err, queue.ErrNotFound) {
			return nil, fmt.Errorf("body of %s: %w", id, err)
		}
	}
	if err == nil {
		err = dead.Err()
		if err == nil {
			return nil, fmt.Errorf("body of %s: a dead letter: %w", id, queue.ErrNotFound)
		}
		if errors.Is(err, goredis.Nil) {
			body, ok, err := r.readBody(ctx, key, first, alloc)
			switch {
			case err != nil:
				return nil, fmt.Errorf("redis store: body of %s: %w", id, err)
			case ok:
				return body, nil
			}
			return nil, fmt.Errorf("body of %s: %w", id, queue.ErrNotFound)
		}
	}
	return nil, fmt.Errorf("redis store: body of %s: %w", id, err)
}

// queued tells from the replies of an XRANGE of sid in the lane's stream
// and an HGET of the delivery's location whether it is still queued:
// ErrNotFound if not. A delivery replayed since (a location other than
// sid) is looked up again where it went.
func (l *lane) queued(ctx context.Context, sid string, entry *goredis.XMessageSliceCmd, loc *goredis.StringCmd) error {
	if err := entry.Err(); err != nil {
		return err
	}
	if len(entry.Val()) > 0 {
		return nil
	}
	moved, err := loc.Result()
	switch {
	case errors.Is(err, goredis.Nil) || err == nil && moved == sid:
		return queue.ErrNotFound
	case err != nil:
		return err
	}
	n, err := l.r.client.XRangeN(ctx, l.stream, moved, moved, 1).Result()
	if err != nil {
		return err
	}
	if len(n) == 0 {
		return queue.ErrNotFound
	}
	return nil
}
