package redis

import (
	"context"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// lane is one destination's queue: a stream of its own with its consumer
// group, attempts and retries (see the key list on Store), so that its
// claims look at its entries alone. Delivery ids are unique across lanes,
// so what works by id alone (bodies, dead letters, replays' locations) is
// the store's.
type lane struct {
	r                *Store
	name             string
	stream, att, due string
}

// laneOf returns the lane of destination name; "" is the store's own.
func (r *Store) laneOf(name string) *lane {
	if name == "" {
		return r.def
	}
	return &lane{r: r, name: name,
		stream: r.stream + ":" + name, att: r.att + ":" + name, due: r.due + ":" + name}
}

// Lane implements queue.Store. A lane needs no declaring: the admit script
// creates its stream and group, and so does its first claim.
func (r *Store) Lane(destination string) queue.Claimer { return r.laneOf(destination) }

// The store's own Claimer methods are lane "".

// Claim implements queue.Store: lane "".
func (r *Store) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	return r.def.Claim(ctx, max)
}

// Extend implements queue.Store: lane "".
func (r *Store) Extend(ctx context.Context, ids []string) error { return r.def.Extend(ctx, ids) }

// Release implements queue.Store: lane "".
func (r *Store) Release(ctx context.Context, ids []string) error { return r.def.Release(ctx, ids) }

// Retry implements queue.Store: lane "".
func (r *Store) Retry(ctx context.Context, e *queue.Entry, due time.Time) error {
	return r.def.Retry(ctx, e, due)
}

// NextDue implements queue.Store: lane "".
func (r *Store) NextDue(ctx context.Context) (time.Time, error) { return r.def.NextDue(ctx) }

// Ack implements queue.Store: lane "".
func (r *Store) Ack(ctx context.Context, id string) error { return r.def.Ack(ctx, id) }

// Bury implements queue.Store: lane "".
func (r *Store) Bury(ctx context.Context, e *queue.Entry) error { return r.def.Bury(ctx, e) }

// Paused implements queue.Claimer: the store's pauses.
func (l *lane) Paused(ctx context.Context) ([]string, error) { return l.r.Paused(ctx) }

// TrimDead implements queue.Claimer: dead letters are the store's.
func (l *lane) TrimDead(ctx context.Context, max int, cutoff time.Time, limit int) ([]*queue.Entry, error) {
	return l.r.TrimDead(ctx, max, cutoff, limit)
}

// Interface guards
var (
	_ queue.Claimer    = (*lane)(nil)
	_ queue.BodyReader = (*lane)(nil)
)
