package redis

import (
	"context"
	"fmt"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// TODO(history): records. Until then this store keeps none.

// Events implements queue.Store.
func (r *Store) Events(ctx context.Context, q queue.EventQuery) ([]*queue.Record, string, error) {
	return []*queue.Record{}, "", nil
}

// Event implements queue.Store.
func (r *Store) Event(ctx context.Context, id string) (*queue.Record, error) {
	return nil, fmt.Errorf("record %s: %w", id, queue.ErrNotFound)
}

// Resend implements queue.Store.
func (r *Store) Resend(ctx context.Context, id string) (int, error) {
	return 0, fmt.Errorf("record %s: %w", id, queue.ErrNotFound)
}
