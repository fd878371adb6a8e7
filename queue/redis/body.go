package redis

import (
	"context"
	"errors"
	"fmt"

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

// readBody finishes a read of the body key that began with first, a
// GETRANGE of its first chunk: a shorter reply is the whole body. ok is
// false when there is no body key, or it went while being read.
func (r *Store) readBody(ctx context.Context, key string, first *goredis.StringCmd) (body []byte, ok bool, err error) {
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
	body = make([]byte, n)
	off := copy(body, head)
	for off < n {
		end := min(off+bodyChunk, n)
		taken, err := r.bodies.take(ctx, int64(end-off))
		if err != nil {
			return nil, false, err
		}
		chunk, err := r.client.GetRange(ctx, key, int64(off), int64(end-1)).Result()
		r.bodies.give(taken)
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
			body, ok, err := r.readBody(ctx, key, first)
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
