package delivery

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// errStorePanicked is what a store call that panicked returns to the
// engine; the panic itself is logged, with its stack, where it happened.
var errStorePanicked = errors.New("the store panicked (logged with its stack)")

// safeStore is the engine's view of its store: every call that panics is
// logged once with its stack and returns errStorePanicked, so the engine
// handles it as it handles a store that cannot be reached. A failed Claim
// (or NextDue) is tried again at the next poll, a failed Body costs one
// attempt, a failed Retry keeps the entry held until its next attempt, a failed Ack or Bury is done again later, a failed Release
// leaves the entries claimed until the store hands them out again (a shared
// store after its visibility timeout, an embedded one at the next start). The loop's bookkeeping never
// sees a panic halfway, and no goroutine that holds a place or bytes of the
// budget dies with them.
//
// What the store did before it panicked is its own affair. bbolt rolls the
// transaction back, and the bolt store records claims only after its read
// went through, so a bolt call that panics changes nothing; claims that
// Redis recorded before a panic in the client lapse after the visibility
// timeout and are handed out again. A Claim that records claims in the
// process and then panics leaves them claimed until the next start: the
// engine never saw their ids.
type safeStore struct {
	store queue.Claimer
	log   func() *zap.Logger
}

// storeCall runs one call of s's store.
func storeCall[T any](s safeStore, method string, fn func() (T, error)) (v T, err error) {
	if guard.Run(s.log(), "the store's "+method, func() { v, err = fn() }) {
		var zero T
		return zero, errStorePanicked
	}
	return v, err
}

// storeCallErr is storeCall for a call that returns only an error.
func storeCallErr(s safeStore, method string, fn func() error) error {
	_, err := storeCall(s, method, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

// recorder is the store's queue.Recorder, nil when it keeps no records.
func (s safeStore) recorder() queue.Recorder {
	r, _ := s.store.(queue.Recorder)
	return r
}

// Attempted records an attempt in the payload's history, when the store
// keeps one.
func (s safeStore) Attempted(ctx context.Context, e *queue.Entry, a queue.Attempt, state string) error {
	r := s.recorder()
	if r == nil {
		return nil
	}
	return storeCallErr(s, "Attempted", func() error { return r.Attempted(ctx, e, a, state) })
}

// TrimHistory removes the records whose history ran out, when the store
// keeps them.
func (s safeStore) TrimHistory(ctx context.Context, limit int) (int, error) {
	r := s.recorder()
	if r == nil {
		return 0, nil
	}
	return storeCall(s, "TrimHistory", func() (int, error) { return r.TrimHistory(ctx, limit) })
}

// Claim implements queue.Claimer.
func (s safeStore) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	return storeCall(s, "Claim", func() ([]*queue.Entry, error) { return s.store.Claim(ctx, max) })
}

// Body implements queue.Claimer.
func (s safeStore) Body(ctx context.Context, id string) ([]byte, error) {
	return storeCall(s, "Body", func() ([]byte, error) { return s.store.Body(ctx, id) })
}

// ReadBody is the store's queue.BodyReader, or its Body if it has none.
func (s safeStore) ReadBody(ctx context.Context, id string) ([]byte, error) {
	if r, ok := s.store.(queue.BodyReader); ok {
		return storeCall(s, "Body", func() ([]byte, error) { return r.ReadBody(ctx, id) })
	}
	return s.Body(ctx, id)
}

// Extend implements queue.Claimer.
func (s safeStore) Extend(ctx context.Context, ids []string) error {
	return storeCallErr(s, "Extend", func() error { return s.store.Extend(ctx, ids) })
}

// Ack implements queue.Claimer.
func (s safeStore) Ack(ctx context.Context, id string) error {
	return storeCallErr(s, "Ack", func() error { return s.store.Ack(ctx, id) })
}

// Bury implements queue.Claimer.
func (s safeStore) Bury(ctx context.Context, e *queue.Entry) error {
	return storeCallErr(s, "Bury", func() error { return s.store.Bury(ctx, e) })
}

// Retry implements queue.Claimer.
func (s safeStore) Retry(ctx context.Context, e *queue.Entry, due time.Time) error {
	return storeCallErr(s, "Retry", func() error { return s.store.Retry(ctx, e, due) })
}

// NextDue implements queue.Claimer.
func (s safeStore) NextDue(ctx context.Context) (time.Time, error) {
	return storeCall(s, "NextDue", func() (time.Time, error) { return s.store.NextDue(ctx) })
}

// Release implements queue.Claimer.
func (s safeStore) Release(ctx context.Context, ids []string) error {
	return storeCallErr(s, "Release", func() error { return s.store.Release(ctx, ids) })
}

// Paused implements queue.Claimer.
func (s safeStore) Paused(ctx context.Context) ([]string, error) {
	return storeCall(s, "Paused", func() ([]string, error) { return s.store.Paused(ctx) })
}

// TrimDead implements queue.Claimer.
func (s safeStore) TrimDead(ctx context.Context, max int, cutoff time.Time, limit int) ([]*queue.Entry, error) {
	return storeCall(s, "TrimDead", func() ([]*queue.Entry, error) { return s.store.TrimDead(ctx, max, cutoff, limit) })
}

// Interface guard
var _ queue.Claimer = safeStore{}
