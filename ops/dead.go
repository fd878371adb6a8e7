package ops

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// DeadLetter is a dead letter as the admin API and the console show it.
type DeadLetter struct {
	ID  string `json:"id"`
	Key string `json:"key"`
	// Destination is the destination the letter was for.
	Destination string    `json:"destination,omitempty"`
	Received    time.Time `json:"received"`
	Attempts    int       `json:"attempts"`
	LastStatus  int       `json:"last_status"`
	LastError   string    `json:"last_error"`
	Died        time.Time `json:"died,omitzero"`
	BodySize    int       `json:"body_size"`
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

// deleteWorkers is how many DeleteDead calls deleteSome makes at a time:
// a store that commits to disk shares one commit among concurrent
// deletes, and Redis answers them over several connections, so a page of
// a match is deleted in a fraction of the time one by one takes (bolt:
// about half a millisecond per letter one by one, an fsync each).
const deleteWorkers = 8

// deleteSome deletes ids, deleteWorkers at a time, skipping those already
// gone; it stops at the first other error and says how many it deleted.
func deleteSome(ctx context.Context, r Relay, ids []string) (int, error) {
	var (
		mu    sync.Mutex
		n     int
		first error
		next  = make(chan string)
		wg    sync.WaitGroup
	)
	for range min(deleteWorkers, len(ids)) {
		wg.Go(func() {
			for id := range next {
				err := deleteOne(ctx, r, id)
				mu.Lock()
				switch {
				case err == nil:
					n++
				case errors.Is(err, ErrNotFound):
				case first == nil:
					first = err
				}
				mu.Unlock()
			}
		})
	}
	for _, id := range ids {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed {
			break
		}
		next <- id
	}
	close(next)
	wg.Wait()
	return n, first
}

// DeleteAll deletes every dead letter of the relay that died by cutoff
// (the moment the operator asked), page by page; one that dies meanwhile
// stays. It says how many it deleted, also when it fails part way.
func DeleteAll(ctx context.Context, relay string, cutoff time.Time) (int, error) {
	r, err := Find(relay)
	if err != nil {
		return 0, err
	}
	return eachMatching(ctx, r, matcher{}, MaxPage, cutoff, func(ids []string) (int, error) {
		return deleteSome(ctx, r, ids)
	})
}

func view(e *queue.Entry, withBody bool) DeadLetter {
	d := DeadLetter{
		ID: e.ID, Key: e.Key, Destination: e.Destination, Received: e.Received, Attempts: e.Attempts, Died: e.Died,
		LastStatus: e.LastStatus, LastError: e.LastError, BodySize: max(e.BodySize, len(e.Body)),
	}
	if withBody {
		d.Request = keptRequest(e.Request)
		d.Body, d.BodyBase64 = bodyView(e.Body)
	}
	return d
}

// keptRequest is what an operator is shown of the request a payload kept.
func keptRequest(m queue.RequestMeta) *KeptRequest {
	return &KeptRequest{Query: m.RawQuery, ContentType: m.ContentType, UserAgent: m.UserAgent,
		ForwardedFor: m.ForwardedFor, Headers: m.Headers}
}

// bodyView is a body as the API shows it: as text when it is UTF-8, else
// in base64 (the second value, which JSON encodes so).
func bodyView(body []byte) (*string, []byte) {
	if utf8.Valid(body) {
		s := string(body)
		return &s, nil
	}
	return nil, body
}
