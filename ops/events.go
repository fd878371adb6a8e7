package ops

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// Event is a payload's record as the admin API, the console and the
// command line show it: where it went, each attempt, and (for one event)
// its body.
type Event struct {
	ID           string                `json:"id"`
	Key          string                `json:"key"`
	Received     time.Time             `json:"received"`
	State        string                `json:"state"`
	Destinations []queue.DeliveryState `json:"destinations"`
	// Attempts are the first and latest attempts, oldest first;
	// AttemptsLeftOut counts those between that were not kept.
	Attempts        []queue.Attempt `json:"attempts"`
	AttemptsLeftOut int             `json:"attempts_left_out,omitempty"`
	// Done is when the last destination was done (delivered or dead); the
	// record is kept for the relay's history after it.
	Done     time.Time `json:"done,omitzero"`
	BodySize int       `json:"body_size"`
	// Request, Body and BodyBase64 are set for a single event, as for a
	// dead letter.
	Request    *KeptRequest `json:"request,omitempty"`
	Body       *string      `json:"body,omitempty"`
	BodyBase64 []byte       `json:"body_base64,omitempty"`
}

// EventPage is one page of a relay's events, newest first; Next, when
// set, is the after of the next page.
type EventPage struct {
	Entries []Event `json:"entries"`
	Next    string  `json:"next,omitempty"`
}

// EventSearch selects events: every field given must match.
type EventSearch struct {
	Key         string // a substring of the key, in any case
	State       string // queued, retrying, delivered or dead
	Destination string
	Since       time.Time // received at or after
	Until       time.Time // received before
	After       string    // the Next of the page before
	Limit       int
}

// Short key searches on a relay with many records are refused rather than
// looking at every record: a record has no index by key.
const (
	MinKeySearch        = 3
	ShortKeySearchLimit = 10000
)

// eventScanCalls bounds the store calls of one page: each looks at
// queue.DefaultEventScan records at most.
const eventScanCalls = 10

// ParseEventSearch reads a search from a URL's query: key, state,
// destination, since and until (RFC 3339), after, limit.
func ParseEventSearch(q url.Values) (EventSearch, error) {
	s := EventSearch{Key: q.Get("key"), State: q.Get("state"), Destination: q.Get("destination"), After: q.Get("after")}
	if s.State != "" && !queue.ValidState(s.State) {
		return s, fail(ErrInvalid, "state %q: want queued, retrying, delivered or dead", s.State)
	}
	for _, t := range []struct {
		name string
		to   *time.Time
	}{{"since", &s.Since}, {"until", &s.Until}} {
		if v := q.Get(t.name); v != "" {
			parsed, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return s, fail(ErrInvalid, "%s: want an RFC 3339 time such as 2026-12-06T20:00:00Z", t.name)
			}
			*t.to = parsed
		}
	}
	if !s.Since.IsZero() && !s.Until.IsZero() && !s.Since.Before(s.Until) {
		return s, fail(ErrInvalid, "since must be before until")
	}
	var err error
	s.Limit, err = ParseLimit(q.Get("limit"))
	return s, err
}

// ListEvents is one page of the relay's events that s selects, newest
// first, without bodies.
func ListEvents(ctx context.Context, relay string, s EventSearch) (EventPage, error) {
	r, err := Find(relay)
	if err != nil {
		return EventPage{}, err
	}
	if s.Limit < 1 || s.Limit > MaxPage {
		return EventPage{}, errLimit()
	}
	if n := len(s.Key); n > 0 && n < MinKeySearch {
		st, err := r.Store().Stats(ctx)
		if err != nil {
			return EventPage{}, storeError(err, "")
		}
		if st.Records > ShortKeySearchLimit {
			return EventPage{}, fail(ErrInvalid, "key: give at least %d characters: this relay keeps %d records and has no index by key, "+
				"so a shorter search would look at every one", MinKeySearch, st.Records)
		}
	}
	q := queue.EventQuery{Before: s.After, Key: s.Key, State: s.State, Destination: s.Destination, Since: s.Since, Until: s.Until}
	page := EventPage{Entries: []Event{}}
	for range eventScanCalls {
		q.Limit = s.Limit - len(page.Entries)
		recs, next, err := r.Store().Events(ctx, q)
		if err != nil {
			return EventPage{}, storeError(err, "")
		}
		for _, rec := range recs {
			page.Entries = append(page.Entries, eventView(rec, false))
		}
		page.Next = next
		if next == "" || len(page.Entries) >= s.Limit {
			break
		}
		q.Before = next
	}
	return page, nil
}

// ShowEvent is one event of the relay with its attempts, kept request and
// body.
func ShowEvent(ctx context.Context, relay, id string) (Event, error) {
	r, err := Find(relay)
	if err != nil {
		return Event{}, err
	}
	rec, err := r.Store().Event(ctx, id)
	if err != nil {
		return Event{}, recordError(err, id)
	}
	return eventView(rec, true), nil
}

// Resend delivers the relay's event id again to every destination that
// has it delivered: the same delivery IDs, and so the same
// Idempotency-Key, with attempts counted afresh. It says how many
// deliveries it queued; an event none of whose destinations has it
// delivered yet is refused (replay its dead letters instead).
func Resend(ctx context.Context, relay, id string) (int, error) {
	r, err := Find(relay)
	if err != nil {
		return 0, err
	}
	n, err := r.Store().Resend(ctx, id)
	if err != nil {
		return 0, recordError(err, id)
	}
	if n == 0 {
		return 0, fail(ErrInvalid, "event %q is not delivered anywhere yet: nothing to resend (a dead one is replayed from the dead letters)", id)
	}
	r.Wake()
	return n, nil
}

// recordError is storeError for records.
func recordError(err error, id string) error {
	if errors.Is(err, queue.ErrNotFound) {
		return &opError{kind: ErrNotFound, msg: fmt.Sprintf("no event with id %q (unknown, or its history ran out)", id), cause: err}
	}
	return storeError(err, id)
}

func eventView(rec *queue.Record, withBody bool) Event {
	e := Event{ID: rec.ID, Key: rec.Key, Received: rec.Received, State: rec.State, Destinations: rec.Destinations,
		Attempts: rec.Attempts, AttemptsLeftOut: rec.AttemptsLeftOut, Done: rec.Done, BodySize: rec.BodySize}
	if e.Attempts == nil {
		e.Attempts = []queue.Attempt{}
	}
	if withBody {
		e.Request = keptRequest(rec.Request)
		e.Body, e.BodyBase64 = bodyView(rec.Body)
	}
	return e
}
