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

// Body implements Store. Besides the body's first chunk, the one round
// trip that reads most bodies whole asks the dead index: the body key is
// kept while the entry is dead too, and the index tells the two apart.
func (r *Store) Body(ctx context.Context, id string) ([]byte, error) {
	return r.body(ctx, id, heapBuffer)
}

// heapBuffer is a buffer on Go's heap, for a body whose caller does not
// free it (Body, DeadEntry).
func heapBuffer(n int) []byte { return make([]byte, n) }

// ReadBody implements queue.BodyReader: a body longer than the first chunk
// is put together in a mapping of bodybuf rather than on the heap.
func (r *Store) ReadBody(ctx context.Context, id string) ([]byte, error) {
	return r.body(ctx, id, bodybuf.Alloc)
}

func (r *Store) body(ctx context.Context, id string, alloc func(int) []byte) ([]byte, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	key := r.bodyPrefix + id
	var dead *goredis.FloatCmd
	var first *goredis.StringCmd
	_, err := r.runCmds(ctx, smallCall+firstChunk, func(pipe goredis.Pipeliner, _ bool) []goredis.Cmder {
		dead, first = pipe.ZScore(ctx, r.deadIdx, id), pipe.GetRange(ctx, key, 0, firstChunk-1)
		return []goredis.Cmder{dead, first}
	})
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
