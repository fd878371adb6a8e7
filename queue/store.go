package queue

import (
	"context"
	"errors"
	"time"
)

// Entry is one acknowledged webhook payload, from the moment it is admitted
// until it is delivered or deleted as a dead letter.
type Entry struct {
	// ID is assigned by the store on Admit and never changes afterwards,
	// not even through a replay. IDs sort (as strings) in admission order.
	// Each delivery of a payload has an ID of its own: the payload's ID
	// when it has one delivery, else the payload's ID, DeliverySep and
	// the destination's name.
	ID string `json:"id"`
	// Payload is the ID of the admission this delivery belongs to: every
	// delivery of one payload has the same Payload, and its body is stored
	// once under it. Set by Admit and kept through a replay.
	Payload string `json:"payload,omitempty"`
	// Key is the dedupe key the payload was admitted under.
	Key string `json:"key"`
	// Destination names the destination this entry is delivered to, as
	// the relay set it at admit; the store keeps it with the entry, on its
	// dead letter and through a replay, and never interprets it. The
	// entry waits in the lane of this destination (Store.Lane).
	Destination string `json:"destination,omitempty"`
	// Destinations, given to Admit, fans the payload out: one delivery
	// per name, in that lane, each with its own attempts, backoff and dead
	// letter, and one stored body. Empty: one delivery to Destination.
	// Admit leaves it as given; nothing else sets it.
	Destinations []string `json:"-"`
	// Body is the request body exactly as received. Claim and Dead leave
	// it out (Body and DeadEntry fetch it), so that what waits for
	// delivery is held without its body.
	Body []byte `json:"-"`
	// BodySize is the body's length in bytes; Claim and Dead set it.
	BodySize int `json:"body_size,omitempty"`
	// Request holds what the delivery needs from the original request.
	Request RequestMeta `json:"request"`
	// Received is when the payload was acknowledged.
	Received time.Time `json:"received"`
	// Queued is when the payload last entered the queue: Received, or the
	// time of a replay. give_up_after counts from here.
	Queued time.Time `json:"queued"`
	// Attempts is how many delivery attempts have been made so far.
	Attempts int `json:"attempts"`
	// LastStatus is the upstream's status code of the last attempt, or 0
	// when the last attempt got no response at all.
	LastStatus int `json:"last_status,omitempty"`
	// LastError says why the last attempt failed, for people.
	LastError string `json:"last_error,omitempty"`
	// Died is when the entry became a dead letter; zero while queued.
	// dead_retention counts from here.
	Died time.Time `json:"died,omitzero"`
	// Damaged is set by Claim on an entry whose stored record could not be
	// read, saying what was wrong; ID is set and the rest is what could be
	// read. The caller buries it (Bury keeps e's attempt record and this
	// reason when the stored one is unreadable) so one bad record never
	// halts the queue.
	Damaged string `json:"-"`
	// MarkerOnly asks Admit to mark Key seen and store nothing: a payload
	// no destination takes (its filters did not match) is answered
	// "ignored", and its re-delivery within the window is a duplicate.
	// Admit answers Accepted (or Duplicate) and sets no ID; nothing is
	// queued, and nothing counts against MaxBacklog or MaxStored.
	MarkerOnly bool `json:"-"`
}

// RequestMeta is the part of the incoming request that is forwarded with
// the body. Auth query parameters are removed before it is stored, so no
// secret is ever written to a store.
type RequestMeta struct {
	// RawQuery is the incoming query string minus the auth parameters.
	RawQuery string `json:"raw_query,omitempty"`
	// ContentType is the incoming Content-Type header.
	ContentType string `json:"content_type,omitempty"`
	// UserAgent is the incoming User-Agent header.
	UserAgent string `json:"user_agent,omitempty"`
	// ForwardedFor is the X-Forwarded-For value to send upstream: a
	// trusted proxy's incoming chain plus the client's address.
	ForwardedFor string `json:"forwarded_for,omitempty"`
	// Headers are the incoming headers kept for the upstream (a signature
	// scheme's own and forward_headers), in the order received.
	Headers []HeaderField `json:"headers,omitempty"`
	// TraceParent and TraceState are the incoming request's W3C trace
	// context (the traceparent and tracestate headers: of the span Caddy's
	// tracing handler started, else as received and checked), "" for
	// none. Each attempt continues that trace with a span of its own.
	TraceParent string `json:"trace_parent,omitempty"`
	TraceState  string `json:"trace_state,omitempty"`
}

// DeliverySep joins a payload's ID and a destination's name into the ID of
// that delivery when a payload has several ('~' sorts after every digit,
// so the deliveries of a payload sort after it and before the next one).
const DeliverySep = "~"

// DeliveryID is the ID of payload's delivery to destination: payload itself
// when it is the only one, else payload~destination.
func DeliveryID(payload, destination string, only bool) string {
	if only {
		return payload
	}
	return payload + DeliverySep + destination
}

// AdmitTimeout is the longest a store that waits on a server lets Admit
// take; past it the sender gets a 503 and retries.
const AdmitTimeout = 10 * time.Second

// Admission is the result of a successful Admit.
type Admission int

const (
	// Accepted means the payload is stored and its key is now marked seen.
	Accepted Admission = iota + 1
	// Duplicate means the key was seen within the window; nothing was stored.
	Duplicate
)

func (a Admission) String() string {
	switch a {
	case Accepted:
		return "accepted"
	case Duplicate:
		return "duplicate"
	}
	return "unknown"
}

var (
	// ErrBacklogFull is returned by Admit when the queue already holds
	// MaxBacklog payloads. The sender should retry later.
	ErrBacklogFull = errors.New("backlog full")
	// ErrStoreFull is returned by Admit when the payload does not fit
	// within MaxStored bytes even after every dead letter gave way for it.
	// The payload was not stored and its key is not marked seen; the dead
	// letters removed on the way stay removed (queued payloads come
	// first). The sender should retry later.
	ErrStoreFull = errors.New("store full")
	// ErrNotFound is returned for an unknown dead letter id.
	ErrNotFound = errors.New("not found")
	// ErrClosed is returned by a store after Close.
	ErrClosed = errors.New("store closed")
)

// Options are the relay settings a store enforces.
type Options struct {
	// Window is how long a key stays seen after it was admitted.
	Window time.Duration
	// MaxBacklog bounds how many payloads may be queued (admitted, not yet
	// delivered nor dead). Zero means no bound.
	MaxBacklog int
	// MaxStored bounds the bytes the store keeps (StoredSize of every
	// queued payload and dead letter, RecordCharge of every record). Zero
	// means no bound.
	MaxStored int64
	// History is how long a payload's record (and its body) is kept after
	// its last delivery was done. Zero keeps no records.
	History time.Duration
	// Evicted, if set, is told after an Admit that removed dead letters to
	// make room under MaxStored, how many it removed. It is called
	// outside the store's locks and must not call the store.
	Evicted func(n int)
	// Now is the store's clock; nil means time.Now. Tests inject their own.
	Now func() time.Time
}

// Clock returns o.Now, or time.Now when it is unset.
func (o Options) Clock() func() time.Time {
	if o.Now != nil {
		return o.Now
	}
	return time.Now
}

// Stats is a snapshot of what a store holds.
type Stats struct {
	// Backlog counts queued deliveries, claimed ones included: a payload
	// fanned out to three destinations counts three until each is done.
	Backlog int `json:"backlog"`
	// Lanes counts the queued deliveries of each destination that has
	// any (see Store.Lane).
	Lanes map[string]int `json:"lanes,omitempty"`
	// Dead counts dead letters.
	Dead int `json:"dead"`
	// OldestQueued is the Queued time of the oldest queued payload, zero
	// when the backlog is empty.
	OldestQueued time.Time `json:"oldest_queued,omitzero"`
	// Keys counts the dedupe markers held (keys seen within the window).
	// Shared stores may count to the nearest minute of expiry.
	Keys int `json:"keys"`
	// Stored is the bytes counted against MaxStored: StoredSize of every
	// payload a delivery, dead letter or record holds, and RecordCharge
	// of every record.
	Stored int64 `json:"stored"`
	// Records counts the payloads' records (Histories).
	Records int `json:"records"`
}

// StoredSize is what one payload counts against MaxStored: its body and its
// kept headers (names and values), once however many destinations it goes
// to. The store counts it when the payload is admitted and gives it back
// when the last of its deliveries is delivered or its dead letter removed;
// a replay or a burial moves it without changing the count.
func StoredSize(body int, headers []HeaderField) int64 {
	n := int64(body)
	for _, h := range headers {
		n += int64(len(h.Name) + len(h.Value))
	}
	return n
}

// Store holds the dedupe markers, the delivery queues and the dead letters
// of one relay: one queue (lane) per destination, with the bodies stored
// once per payload and shared by its deliveries. Every implementation has the same semantics; the suite in
// queue/storetest checks them. All methods are safe for concurrent use.
//
// Each part of the relay sees only its role: the handler an Admitter, the
// delivery engine a Claimer, the admin API DeadLetters. The pooled relay
// that opened the store owns the rest (limits, stats, closing).
type Store interface {
	Admitter
	// Claimer is Lane(""): the deliveries admitted without a destination
	// name (tests and tools; the relay always names its destinations).
	Claimer
	DeadLetters
	Pauses
	Histories

	// Lane is the queue of one destination's deliveries: Claim and NextDue
	// see only them, so a destination that is paused, rate-limited or
	// failing never holds up another. A delivery is ended (Ack, Bury,
	// Retry, Release, Extend) and its body read through the lane it was
	// claimed from. A lane needs no declaring: Admit fills it. The lanes
	// of the bolt and Redis stores are BodyReaders too.
	Lane(destination string) Claimer

	// SetLimits applies a new window and backlog bound to later admits
	// (a config reload changed them).
	SetLimits(window time.Duration, maxBacklog int)
	// SetMaxStored applies a new bound on the bytes kept (MaxStored) to
	// later admits.
	SetMaxStored(maxStored int64)
	// SetHistory applies a new History to later admits and trims.
	SetHistory(history time.Duration)

	// Stats reports what the store holds.
	Stats(ctx context.Context) (Stats, error)
	// Close releases the store's resources. Claimed entries stay queued.
	// The store never keeps a reference to a caller's Entry or Body.
	Close() error
}

// Admitter is the ack path's view of a store.
type Admitter interface {
	// Admit atomically either finds e.Key seen within the window (Duplicate)
	// or stores e and marks e.Key seen, both or neither.
	// With e.Destinations it stores one delivery per destination and the
	// body once, all or nothing.
	// With History set, it keeps the payload's record too (NewRecord),
	// which holds the body until History after the payload is done.
	// ErrBacklogFull when the queue is full (MaxBacklog counts
	// deliveries), ErrStoreFull when the payload
	// does not fit within MaxStored bytes. Before that, in the same atomic
	// step, the records of done payloads (oldest Done first), then the
	// oldest dead letters (oldest Died first) give way one by one until it
	// fits or none is left (Options.Evicted counts the letters); Admit reports how many to
	// Options.Evicted. Any other error means the
	// store could not be reached and nothing was stored. On Accepted the
	// store sets e.ID, and e.Received and e.Queued to its clock's now.
	// The caller's ctx may have no deadline: a store that waits on a server
	// gives up after AdmitTimeout at the latest. The store does not use
	// e.Body once Admit returns, whatever the outcome: the caller frees it
	// then (a large one is unmapped, see internal/bodybuf).
	Admit(ctx context.Context, e *Entry) (Admission, error)
}

// Claimer is the delivery engine's view of a store: the claim protocol.
//
// A worker Claims entries; a claimed entry is not handed out again while
// its claim is alive. The worker then ends the claim with exactly one of Ack
// (delivered), Bury (dead letter), Retry (a failed attempt: the entry waits
// in the store until it is due again) or Release (give it back to the queue
// unchanged, e.g. at shutdown). While it holds a claim it calls Extend to
// keep it alive. A claim held by a process that died is
// handed out again (after a visibility timeout in shared stores; at the next
// start in embedded ones). The engine that makes dead letters also keeps
// them within their bounds (TrimDead).
type Claimer interface {
	// Claim hands out up to max queued entries that nobody holds and that
	// are due, oldest due first, without their bodies (BodySize is set). An
	// entry is due from its admission (or replay) until Retry puts it off;
	// then from the time Retry gave. It does not block waiting for entries. An entry whose record cannot be read comes back
	// with Damaged set instead of failing the claim.
	Claim(ctx context.Context, max int) ([]*Entry, error)
	// Body returns the body of a queued entry, or ErrNotFound when it is
	// no longer queued. The caller owns the slice.
	Body(ctx context.Context, id string) ([]byte, error)
	// Extend keeps the claims on ids alive.
	Extend(ctx context.Context, ids []string) error
	// Ack removes a delivered entry from the queue. The payload's body
	// goes with the last of its deliveries still queued or dead.
	Ack(ctx context.Context, id string) error
	// Bury moves a claimed entry to the dead letters, keeping its Attempts,
	// LastStatus and LastError, and sets Died to the store's now.
	Bury(ctx context.Context, e *Entry) error
	// Retry ends the claim on a failed entry: it records e's Attempts,
	// LastStatus and LastError (replacing what an earlier Retry recorded),
	// and the entry is not handed out again before due (any process of a shared store may then
	// claim it). ErrNotFound when the entry is not queued any more.
	Retry(ctx context.Context, e *Entry, due time.Time) error
	// NextDue reports when the earliest entry put off by Retry that nobody
	// holds is due, zero when none waits. The engine sleeps until then.
	NextDue(ctx context.Context) (time.Time, error)
	// Release gives claimed entries back to the queue unchanged.
	Release(ctx context.Context, ids []string) error

	// Paused lists the paused destinations (see Pauses). The engine reads
	// it before it claims and while it is paused, so a pause set by any
	// process of a shared store stops its claims.
	Paused(ctx context.Context) ([]string, error)

	// TrimDead removes dead letters, oldest Died first: those that died
	// before the cutoff (zero: none by age), then the oldest ones while more
	// than max remain (0: no bound), at most limit in one call. It returns
	// the removed letters without bodies; fewer than limit means it is done.
	TrimDead(ctx context.Context, max int, cutoff time.Time, limit int) ([]*Entry, error)
}

// BodyReader is a Claimer that can hand out a large body outside Go's
// heap, so that the engine gives its memory back the moment an attempt is
// over instead of at some later collection (see internal/bodybuf). The
// bolt and Redis stores are; the engine uses Body with others.
type BodyReader interface {
	// ReadBody is Body, except that a body of bodybuf.Threshold bytes or
	// more may be in a buffer of bodybuf.Alloc: the caller must
	// bodybuf.Free it once nothing uses it, and must not use it after.
	ReadBody(ctx context.Context, id string) ([]byte, error)
}

// Pauses is the operator's view of the relay's paused destinations, kept
// in the store so that a pause survives a restart and holds for every
// process sharing the store. A paused destination keeps its payloads
// queued and gets no attempt until it is resumed.
type Pauses interface {
	// SetPaused pauses (paused true) or resumes the destination named.
	// Pausing a paused destination, or resuming one that is not, changes
	// nothing.
	SetPaused(ctx context.Context, destination string, paused bool) error
	// Paused lists the paused destinations, sorted by name; none is an
	// empty list.
	Paused(ctx context.Context) ([]string, error)
}

// DeadLetters is the operator's view of a store, through the admin API.
type DeadLetters interface {
	// Dead lists dead letters in id order, starting after the id in after
	// (empty: from the start), at most limit of them, without bodies but
	// with BodySize set.
	Dead(ctx context.Context, after string, limit int) ([]*Entry, error)
	// DeadEntry returns one dead letter with its body, or ErrNotFound.
	DeadEntry(ctx context.Context, id string) (*Entry, error)
	// DeleteDead removes one dead letter, or returns ErrNotFound. The
	// payload's body goes with the last of its deliveries.
	DeleteDead(ctx context.Context, id string) error
	// Replay puts dead letters back in their destination's lane with Attempts reset and
	// Queued set to now: the ones in ids, or all of them when ids is nil
	// (an empty, non-nil ids replays nothing). It returns how many went
	// back. Unknown ids are skipped. MaxBacklog does not apply: a replay is
	// an operator's decision. A large replay runs in bounded steps, so it
	// never holds up admits for long.
	Replay(ctx context.Context, ids []string) (int, error)
}
