package queue

import (
	"context"
	"time"
	"unicode/utf8"
)

// A payload's history: the record a store keeps of each accepted payload,
// from its admission until History after the last of its deliveries was
// done (delivered or dead), with its body, so that an operator can answer
// "did it reach the app, when, and what did the app answer?".

// The states of a delivery, and of a record over all its deliveries.
const (
	StateQueued    = "queued"    // waiting for its first attempt, or replayed or resent
	StateRetrying  = "retrying"  // an attempt failed; another is due
	StateDelivered = "delivered" // the destination answered 2xx
	StateDead      = "dead"      // given up: a dead letter
)

// ValidState tells whether s names a state.
func ValidState(s string) bool {
	switch s {
	case StateQueued, StateRetrying, StateDelivered, StateDead:
		return true
	}
	return false
}

// MaxRecordAttempts bounds the attempts a record keeps: the first and the
// latest ones, so a payload retried for days keeps a record of bounded
// size; Record.AttemptsLeftOut counts those left out between.
const MaxRecordAttempts = 10

// MaxAttemptError bounds the error text an attempt keeps, in bytes.
const MaxAttemptError = 200

// RecordCharge is what a record counts against MaxStored besides its
// payload's body and kept headers (counted once, with the payload): a
// fixed charge at least the size of a record with MaxRecordAttempts
// attempts, so that the bytes a store keeps are bounded by MaxStored
// however many small payloads it remembers.
const RecordCharge = 4096

// Attempt is one delivery attempt, as a record keeps it.
type Attempt struct {
	Destination string    `json:"destination"`
	At          time.Time `json:"at"`
	// Status is the upstream's answer, 0 when there was none.
	Status     int    `json:"status"`
	DurationMS int64  `json:"duration_ms"`
	Error      string `json:"error,omitempty"`
}

// DeliveryState is one destination's part of a record.
type DeliveryState struct {
	Destination string `json:"destination"`
	// ID is the delivery's ID (its dead letter's, when it is dead).
	ID       string `json:"id"`
	State    string `json:"state"`
	Attempts int    `json:"attempts"`
	// Done is when it was delivered or died; zero while queued or retrying.
	Done time.Time `json:"done,omitzero"`
}

// Record is what a store keeps of one accepted payload.
type Record struct {
	// ID is the payload's ID (Entry.Payload).
	ID       string    `json:"id"`
	Key      string    `json:"key"`
	Received time.Time `json:"received"`
	// State is over every destination: dead if any is dead, delivered
	// once every one is, retrying if any is, else queued (see Settle).
	State        string          `json:"state"`
	Destinations []DeliveryState `json:"destinations"`
	// Attempts are the first and the latest attempts, oldest first, at
	// most MaxRecordAttempts; AttemptsLeftOut counts those between that
	// were not kept.
	Attempts        []Attempt `json:"attempts"`
	AttemptsLeftOut int       `json:"attempts_left_out,omitempty"`
	// Done is when the last delivery was done (delivered or dead); the
	// record is kept until Done plus the store's History. Zero while any
	// delivery is queued or retrying.
	Done     time.Time   `json:"done,omitzero"`
	Request  RequestMeta `json:"request"`
	BodySize int         `json:"body_size"`
	// Body is set by Event only.
	Body []byte `json:"-"`
}

// NewRecord is the record of e as Admit accepted it: every delivery
// queued. Stores make records with it, so they all keep the same.
func NewRecord(e *Entry) *Record {
	dests := e.Destinations
	if len(dests) == 0 {
		dests = []string{e.Destination}
	}
	r := &Record{ID: e.Payload, Key: e.Key, Received: e.Received, State: StateQueued,
		Destinations: make([]DeliveryState, len(dests)), Attempts: []Attempt{},
		Request: e.Request, BodySize: len(e.Body)}
	for i, d := range dests {
		r.Destinations[i] = DeliveryState{Destination: d, ID: DeliveryID(e.Payload, d, len(dests) == 1), State: StateQueued}
	}
	return r
}

// Attempted records attempt a of the delivery with ID id, and the state it
// left the delivery in, then settles the record (see Settle). It reports
// whether the record has a delivery id.
func (r *Record) Attempted(id string, a Attempt, state string) bool {
	d := r.delivery(id)
	if d == nil {
		return false
	}
	if len(a.Error) > MaxAttemptError {
		a.Error = truncateUTF8(a.Error, MaxAttemptError)
	}
	d.Attempts++
	d.State = state
	d.Done = time.Time{}
	if state == StateDelivered || state == StateDead {
		d.Done = a.At
	}
	if len(r.Attempts) >= MaxRecordAttempts {
		// keep the first; drop the oldest of the latest
		r.Attempts = append(r.Attempts[:1], r.Attempts[2:]...)
		r.AttemptsLeftOut++
	}
	r.Attempts = append(r.Attempts, a)
	r.Settle()
	return true
}

// Requeued marks the delivery with ID id queued again (a replay or a
// resend) and settles the record.
func (r *Record) Requeued(id string) bool {
	d := r.delivery(id)
	if d == nil {
		return false
	}
	d.State, d.Done = StateQueued, time.Time{}
	r.Settle()
	return true
}

func (r *Record) delivery(id string) *DeliveryState {
	for i := range r.Destinations {
		if r.Destinations[i].ID == id {
			return &r.Destinations[i]
		}
	}
	return nil
}

// Settle sets State and Done from the deliveries' states.
func (r *Record) Settle() {
	delivered, dead, retrying := 0, 0, 0
	var done time.Time
	for _, d := range r.Destinations {
		switch d.State {
		case StateDelivered:
			delivered++
		case StateDead:
			dead++
		case StateRetrying:
			retrying++
		}
		if d.Done.After(done) {
			done = d.Done
		}
	}
	switch {
	case dead > 0:
		r.State = StateDead
	case delivered == len(r.Destinations):
		r.State = StateDelivered
	case retrying > 0:
		r.State = StateRetrying
	default:
		r.State = StateQueued
	}
	r.Done = time.Time{}
	if delivered+dead == len(r.Destinations) {
		r.Done = done
	}
}

// Matches tells whether r is one q asks for (apart from Before and Limit).
func (q *EventQuery) Matches(r *Record) bool {
	if q.State != "" && r.State != q.State {
		return false
	}
	if q.Destination != "" {
		found := false
		for _, d := range r.Destinations {
			found = found || d.Destination == q.Destination
		}
		if !found {
			return false
		}
	}
	if !q.Since.IsZero() && r.Received.Before(q.Since) {
		return false
	}
	if !q.Until.IsZero() && !r.Received.Before(q.Until) {
		return false
	}
	return q.Key == "" || containsFold(r.Key, q.Key)
}

// EventQuery selects records: every field given must match.
type EventQuery struct {
	// Before pages: only records with an ID before it (older), newest
	// first; "" starts from the newest.
	Before string
	// Limit is the most records returned.
	Limit int
	// Scan bounds how many records one call looks at (0: Limit's worth
	// and more, a store's default), so that a search matching few of
	// 100,000 records answers in pages too.
	Scan int
	// Key is a substring of the key; Destination one of the record's
	// destinations; State its state; Since and Until bound Received
	// (Until excluded).
	Key, Destination, State string
	Since, Until            time.Time
}

// DefaultEventScan is how many records one Events call looks at when the
// query does not say.
const DefaultEventScan = 5000

// Histories is the operator's view of the records.
type Histories interface {
	// Events lists the records q selects, newest first, and where the
	// next page starts (Before of the next query): "" when no record is
	// left to look at. It looks at no more than q.Scan records (or
	// DefaultEventScan), so a page may hold fewer than q.Limit with more
	// to come.
	Events(ctx context.Context, q EventQuery) ([]*Record, string, error)
	// Event returns one record with its body, or ErrNotFound.
	Event(ctx context.Context, id string) (*Record, error)
	// Resend puts the deliveries of the record id that were delivered
	// back in their lanes (the same delivery IDs, Attempts reset), and
	// returns how many: 0 when none was delivered. ErrNotFound for an
	// unknown record.
	Resend(ctx context.Context, id string) (int, error)
}

// Recorder is a Claimer that keeps records: the lanes of every store.
type Recorder interface {
	// Attempted records attempt a of the claimed delivery e in its
	// payload's record, and the state it left e in (StateDelivered,
	// StateRetrying or StateDead), before the engine acks, retries or
	// buries e. No record (history off, or given way): nothing to do.
	Attempted(ctx context.Context, e *Entry, a Attempt, state string) error
	// TrimHistory removes the records whose History ran out (Done plus
	// History before now), at most limit, and the bodies no delivery
	// holds any more; it returns how many it removed.
	TrimHistory(ctx context.Context, limit int) (int, error)
}

func containsFold(s, sub string) bool {
	n := len(sub)
	for i := 0; i+n <= len(s); i++ {
		if equalFoldASCII(s[i:i+n], sub) {
			return true
		}
	}
	return false
}

func equalFoldASCII(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// truncateUTF8 cuts s to at most n bytes, not inside a character.
func truncateUTF8(s string, n int) string {
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
