package redis

import (
	"context"
	"fmt"
	"slices"
)

// The paused destinations are the members of the set {p}:paused, under the
// relay's hash tag like its other keys. Every instance's engine reads it
// before it claims, so a pause set through any instance holds for all.

// SetPaused implements queue.Store.
func (r *Store) SetPaused(ctx context.Context, destination string, paused bool) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	var err error
	if paused {
		err = r.client.SAdd(ctx, r.paused, destination).Err()
	} else {
		err = r.client.SRem(ctx, r.paused, destination).Err()
	}
	if err != nil {
		return fmt.Errorf("redis store: setting a pause: %w", err)
	}
	return nil
}

// Paused implements queue.Store.
func (r *Store) Paused(ctx context.Context) ([]string, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	out, err := r.client.SMembers(ctx, r.paused).Result()
	if err != nil {
		return nil, fmt.Errorf("redis store: reading the pauses: %w", err)
	}
	slices.Sort(out)
	return out, nil
}
