// Package ops is the operations layer of the relays running in this
// process: their status and totals (status.go), and their dead letters:
// list, show, replay, delete (dead.go), and replay or delete every letter
// that matches, a page at a time (match.go); and pausing and resuming its
// destinations (pause.go). The admin API (admin.go), the
// console and the metrics all read and change the relays through it; the
// commands decode its JSON types from the admin API.
//
// Errors are plain Go errors: a missing relay is ErrNoRelay, a missing dead
// letter ErrNotFound, a missing destination ErrNoDestination, a bad argument ErrInvalid, a store that cannot be
// reached ErrStore. The HTTP status each one answers is the admin API's
// business (HTTPError).
package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// The kinds of error an operation fails with; errors.Is tells them apart.
var (
	ErrNoRelay  = errors.New("no such relay")
	ErrNotFound = errors.New("no such dead letter")
	// ErrNoDestination is a destination the relay does not have.
	ErrNoDestination = errors.New("no such destination")
	ErrInvalid       = errors.New("invalid request")
	ErrStore         = errors.New("store unavailable")
)

// opError is an error of one of the kinds above, with the message a person
// reads, and the store's error when there is one.
type opError struct {
	kind  error
	msg   string
	cause error
}

func (e *opError) Error() string   { return e.msg }
func (e *opError) Unwrap() []error { return []error{e.kind, e.cause} }

func fail(kind error, format string, args ...any) error {
	return &opError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// storeError is what a store's error means to an operator: a dead letter
// that is not there, or a store that cannot be reached.
func storeError(err error, id string) error {
	if errors.Is(err, queue.ErrNotFound) {
		return &opError{kind: ErrNotFound, msg: fmt.Sprintf("no dead letter with id %q", id), cause: err}
	}
	return &opError{kind: ErrStore, msg: "store unavailable: " + err.Error(), cause: err}
}

// Store is what operations read and change of a relay's store.
type Store interface {
	queue.DeadLetters
	queue.Pauses
	queue.Histories
	Stats(ctx context.Context) (queue.Stats, error)
}

// Relay is one relay running in this process, as operations see it. The
// pooled relays of the webhook_relay handler register themselves.
type Relay interface {
	Name() string
	// StoreIdentity names the store and where it keeps the relay's state.
	StoreIdentity() string
	Store() Store
	// InFlight counts the delivery attempts running now.
	InFlight() int
	// MemoryUsed is the bytes of bodies held in memory now.
	MemoryUsed() int64
	// Wake makes the deliveries look at the queue now (after a replay),
	// and read their pauses again (after a pause or resume).
	Wake()
	// Destinations are the names of the relay's destinations in the
	// newest config using it.
	Destinations() []string
	// Totals are the relay's counts since Caddy started.
	Totals() Totals
	// Bounds are the limits of the newest config using the relay; false
	// when no config uses it any more.
	Bounds() (Bounds, bool)
}

var (
	mu     sync.Mutex
	relays []Relay // registered, oldest first
)

// Register makes r known to the operations, until Unregister.
func Register(r Relay) {
	mu.Lock()
	defer mu.Unlock()
	relays = append(relays, r)
}

// Unregister forgets r.
func Unregister(r Relay) {
	mu.Lock()
	defer mu.Unlock()
	relays = slices.DeleteFunc(relays, func(other Relay) bool { return other == r })
}

// Relays are the relays registered, by name; during a store change two
// generations of one relay share a name, the newer last.
func Relays() []Relay {
	mu.Lock()
	out := slices.Clone(relays)
	mu.Unlock()
	slices.SortStableFunc(out, func(a, b Relay) int { return cmp.Compare(a.Name(), b.Name()) })
	return out
}

// Find is the relay called name (the newest, during a store change).
func Find(name string) (Relay, error) {
	mu.Lock()
	defer mu.Unlock()
	for i := len(relays) - 1; i >= 0; i-- {
		if relays[i].Name() == name {
			return relays[i], nil
		}
	}
	return nil, fail(ErrNoRelay, "no relay named %q is running", name)
}
