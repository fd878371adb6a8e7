// Package ops is the operations layer of the relays running in this
// process: their status and totals, and their dead letters (list, show,
// replay, delete). The admin API (admin.go), the console and the metrics
// all read and change the relays through it; the commands decode its JSON
// types from the admin API.
//
// Errors are plain Go errors: a missing relay is ErrNoRelay, a missing dead
// letter ErrNotFound, a bad argument ErrInvalid, a store that cannot be
// reached ErrStore. The HTTP status each one answers is the admin API's
// business (HTTPError).
package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// The kinds of error an operation fails with; errors.Is tells them apart.
var (
	ErrNoRelay  = errors.New("no such relay")
	ErrNotFound = errors.New("no such dead letter")
	ErrInvalid  = errors.New("invalid request")
	ErrStore    = errors.New("store unavailable")
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
	// Wake makes the deliveries look at the queue now (after a replay).
	Wake()
	// Totals are the relay's counts since Caddy started.
	Totals() Totals
	// Bounds are the limits of the newest config using the relay; false
	// when no config uses it any more.
	Bounds() (Bounds, bool)
}

// Totals are a relay's counts since Caddy started, the same the Prometheus
// counters show.
type Totals struct {
	Requests    map[string]int64 // by outcome of the ack path
	Deliveries  map[string]int64 // attempts by result
	DeadDropped int64            // dead letters removed by max_dead or dead_retention
}

// Bounds are what the status shows of a relay's newest config.
type Bounds struct {
	UpstreamHost  string
	MaxMemory     int64
	MaxDead       int
	DeadRetention time.Duration
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

// RelayStatus is one relay in the overview.
type RelayStatus struct {
	Name         string     `json:"name"`
	Store        string     `json:"store"`
	UpstreamHost string     `json:"upstream_host"`
	Backlog      int        `json:"backlog"`
	InFlight     int        `json:"in_flight"`
	DeadLetters  int        `json:"dead_letters"`
	OldestQueued *time.Time `json:"oldest_queued,omitempty"`
	// Keys counts the dedupe markers held; MemoryBytes the bodies held in
	// memory now.
	Keys        int   `json:"keys"`
	MemoryBytes int64 `json:"memory_bytes"`
	DeadDropped int64 `json:"dead_dropped"`
	// The bounds in force, from the newest config.
	MaxMemory     int64            `json:"max_memory"`
	MaxDead       int              `json:"max_dead"`
	DeadRetention string           `json:"dead_retention"`
	Requests      map[string]int64 `json:"requests"`
	Deliveries    map[string]int64 `json:"deliveries"`
	// Error says why the store's numbers are missing.
	Error string `json:"error,omitempty"`
}

// List is the status of every relay running in this process, by name.
func List(ctx context.Context) []RelayStatus {
	out := []RelayStatus{}
	for _, r := range Relays() {
		out = append(out, Status(ctx, r))
	}
	return out
}

// Status is r's status now. A store that cannot answer leaves its numbers
// zero and says why in Error.
func Status(ctx context.Context, r Relay) RelayStatus {
	s := RelayStatus{Name: r.Name(), Store: r.StoreIdentity(), MemoryBytes: r.MemoryUsed()}
	// The store first, the totals after it: a delivery is counted before
	// it leaves the queue, so totals read later always include every
	// delivery the backlog no longer shows.
	st, err := r.Store().Stats(ctx)
	s.InFlight = r.InFlight() // after the store too: an attempt leaves it first
	t := r.Totals()
	s.Requests, s.Deliveries, s.DeadDropped = t.Requests, t.Deliveries, t.DeadDropped
	if err != nil {
		s.Error = "store unavailable: " + err.Error()
	} else {
		s.Backlog, s.DeadLetters, s.Keys = st.Backlog, st.Dead, st.Keys
		if !st.OldestQueued.IsZero() {
			s.OldestQueued = &st.OldestQueued
		}
	}
	if b, ok := r.Bounds(); ok {
		s.UpstreamHost, s.MaxMemory, s.MaxDead = b.UpstreamHost, b.MaxMemory, b.MaxDead
		s.DeadRetention = b.DeadRetention.String()
	}
	return s
}

// DeadLetter is a dead letter as the admin API and the console show it.
type DeadLetter struct {
	ID         string    `json:"id"`
	Key        string    `json:"key"`
	Received   time.Time `json:"received"`
	Attempts   int       `json:"attempts"`
	LastStatus int       `json:"last_status"`
	LastError  string    `json:"last_error"`
	Died       time.Time `json:"died,omitzero"`
	BodySize   int       `json:"body_size"`
	// Request is set for a single dead letter: what was kept of the
	// original request for its delivery.
	Request *KeptRequest `json:"request,omitempty"`
	// Body is set for a single dead letter: the body as text when it is
	// UTF-8, otherwise BodyBase64 holds it.
	Body       *string `json:"body,omitempty"`
	BodyBase64 []byte  `json:"body_base64,omitempty"`
}

// KeptRequest is what a dead letter kept of its original request, field
// by field: only what is listed here is ever shown (the auth parameters
// were removed from the query before it was stored).
type KeptRequest struct {
	Query        string `json:"query,omitempty"`
	ContentType  string `json:"content_type,omitempty"`
	UserAgent    string `json:"user_agent,omitempty"`
	ForwardedFor string `json:"forwarded_for,omitempty"`
	// Headers are the incoming headers kept for the upstream: the verify
	// scheme's own (signatures, never secrets) and forward_headers.
	Headers []queue.HeaderField `json:"headers,omitempty"`
}

// DeadPage is one page of a relay's dead letters; Next, when set, is the
// after of the next page.
type DeadPage struct {
	Entries []DeadLetter `json:"entries"`
	Next    string       `json:"next,omitempty"`
}

// MaxPage bounds one page of dead letters; DefaultPage is a page's size
// when none is asked for.
const MaxPage, DefaultPage = 1000, 100

// ParseLimit reads a page size given as text; empty is DefaultPage.
func ParseLimit(v string) (int, error) {
	if v == "" {
		return DefaultPage, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxPage {
		return 0, errLimit()
	}
	return n, nil
}

func errLimit() error { return fail(ErrInvalid, "limit: want a whole number from 1 to %d", MaxPage) }

// ListDead is one page of the relay's dead letters, without bodies, in id
// order after the id after (empty: from the first), at most limit.
func ListDead(ctx context.Context, relay, after string, limit int) (DeadPage, error) {
	r, err := Find(relay)
	if err != nil {
		return DeadPage{}, err
	}
	if limit < 1 || limit > MaxPage {
		return DeadPage{}, errLimit()
	}
	entries, err := r.Store().Dead(ctx, after, limit)
	if err != nil {
		return DeadPage{}, storeError(err, "")
	}
	page := DeadPage{Entries: []DeadLetter{}}
	for _, e := range entries {
		page.Entries = append(page.Entries, view(e, false))
	}
	if len(entries) == limit {
		page.Next = entries[len(entries)-1].ID
	}
	return page, nil
}

// ShowDead is one dead letter of the relay with its body and kept request.
func ShowDead(ctx context.Context, relay, id string) (DeadLetter, error) {
	r, err := Find(relay)
	if err != nil {
		return DeadLetter{}, err
	}
	e, err := r.Store().DeadEntry(ctx, id)
	if err != nil {
		return DeadLetter{}, storeError(err, id)
	}
	return view(e, true), nil
}

// Replay puts the relay's dead letters in ids (nil: all of them) back in
// its queue, wakes its deliveries, and says how many went back; unknown ids
// are skipped.
func Replay(ctx context.Context, relay string, ids []string) (int, error) {
	r, err := Find(relay)
	if err != nil {
		return 0, err
	}
	n, err := r.Store().Replay(ctx, ids)
	if err != nil {
		return 0, storeError(err, "")
	}
	r.Wake()
	return n, nil
}

// Delete removes one dead letter of the relay.
func Delete(ctx context.Context, relay, id string) error {
	r, err := Find(relay)
	if err != nil {
		return err
	}
	return deleteOne(ctx, r, id)
}

func deleteOne(ctx context.Context, r Relay, id string) error {
	if err := r.Store().DeleteDead(ctx, id); err != nil {
		return storeError(err, id)
	}
	return nil
}

// DeleteSome deletes the relay's dead letters in ids, skipping those
// already gone (replayed or deleted meanwhile), and says how many it
// deleted.
func DeleteSome(ctx context.Context, relay string, ids []string) (int, error) {
	r, err := Find(relay)
	if err != nil {
		return 0, err
	}
	return deleteSome(ctx, r, ids)
}

func deleteSome(ctx context.Context, r Relay, ids []string) (int, error) {
	n := 0
	for _, id := range ids {
		err := deleteOne(ctx, r, id)
		switch {
		case err == nil:
			n++
		case errors.Is(err, ErrNotFound):
		default:
			return n, err
		}
	}
	return n, nil
}

// DeleteAll deletes every dead letter of the relay that died by cutoff
// (the moment the operator asked), page by page; one that dies meanwhile
// stays. It says how many it deleted, also when it fails part way.
func DeleteAll(ctx context.Context, relay string, cutoff time.Time) (int, error) {
	r, err := Find(relay)
	if err != nil {
		return 0, err
	}
	n, after := 0, ""
	for {
		entries, err := r.Store().Dead(ctx, after, MaxPage)
		if err != nil {
			return n, storeError(err, "")
		}
		var ids []string
		for _, e := range entries {
			if !e.Died.After(cutoff) {
				ids = append(ids, e.ID)
			}
		}
		m, err := deleteSome(ctx, r, ids)
		n += m
		if err != nil || len(entries) < MaxPage {
			return n, err
		}
		after = entries[len(entries)-1].ID
	}
}

func view(e *queue.Entry, withBody bool) DeadLetter {
	d := DeadLetter{
		ID: e.ID, Key: e.Key, Received: e.Received, Attempts: e.Attempts, Died: e.Died,
		LastStatus: e.LastStatus, LastError: e.LastError, BodySize: max(e.BodySize, len(e.Body)),
	}
	if withBody {
		d.Request = &KeptRequest{
			Query:        e.Request.RawQuery,
			ContentType:  e.Request.ContentType,
			UserAgent:    e.Request.UserAgent,
			ForwardedFor: e.Request.ForwardedFor,
			Headers:      e.Request.Headers,
		}
		if utf8.Valid(e.Body) {
			s := string(e.Body)
			d.Body = &s
		} else {
			d.BodyBase64 = e.Body
		}
	}
	return d
}
