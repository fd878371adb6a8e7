package ops

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// Selection names the dead letters a replay or a delete acts on, by one
// of its fields: IDs, All or Match. It is the body of the admin API's
// dead/replay and dead/delete. A selection that names none acts on none
// (never on all), and one that names more than one is refused.
type Selection struct {
	// IDs are the dead letters' ids; unknown ones are skipped.
	IDs []string `json:"ids,omitempty"`
	// All is every dead letter of the relay.
	All bool `json:"all,omitempty"`
	// Match is every dead letter that matches, however many.
	Match *Match `json:"match,omitempty"`
}

// Match selects dead letters by what they carry. Every field given must
// match; a letter is selected when all of them do. At least one field must
// be given: use Selection.All to act on every letter.
type Match struct {
	// Destination is the destination's name, exactly.
	Destination string `json:"destination,omitempty"`
	// Status is the last status, exactly (last_status; 0 matches letters
	// whose last attempt got no answer at all).
	Status *int `json:"status,omitempty"`
	// Key is a substring of the dedupe key (case-sensitive).
	Key string `json:"key,omitempty"`
	// Since and Until bound when the letter died, as RFC 3339 times: died
	// at or after Since, and before Until.
	Since string `json:"since,omitempty"`
	Until string `json:"until,omitempty"`
}

// String describes m for people, e.g. `status 500, key "task-"`.
func (m Match) String() string {
	var parts []string
	if m.Destination != "" {
		parts = append(parts, fmt.Sprintf("destination %q", m.Destination))
	}
	if m.Status != nil {
		parts = append(parts, fmt.Sprintf("status %d", *m.Status))
	}
	if m.Key != "" {
		parts = append(parts, fmt.Sprintf("key containing %q", m.Key))
	}
	if m.Since != "" {
		parts = append(parts, "died since "+m.Since)
	}
	if m.Until != "" {
		parts = append(parts, "died before "+m.Until)
	}
	return strings.Join(parts, ", ")
}

// matcher is a Match checked and parsed.
type matcher struct {
	destination, key string
	status           int
	hasStatus        bool
	since, until     time.Time
}

// compile checks m: at least one field, RFC 3339 times in order, a
// status code that can be one.
func (m Match) compile() (matcher, error) {
	c := matcher{destination: m.Destination, key: m.Key}
	if m == (Match{}) {
		return c, fail(ErrInvalid, "match needs at least one field; use all to act on every letter")
	}
	if m.Status != nil {
		if *m.Status < 0 || *m.Status > 999 {
			return c, fail(ErrInvalid, "match.status: want an HTTP status code, or 0 for letters whose last attempt got no answer")
		}
		c.status, c.hasStatus = *m.Status, true
	}
	for _, t := range []struct {
		field, text string
		into        *time.Time
	}{{"since", m.Since, &c.since}, {"until", m.Until, &c.until}} {
		if t.text == "" {
			continue
		}
		v, err := time.Parse(time.RFC3339Nano, t.text)
		if err != nil {
			return c, fail(ErrInvalid, "match.%s: %q is not an RFC 3339 time (e.g. 2026-12-06T20:00:00Z)", t.field, t.text)
		}
		*t.into = v
	}
	if !c.since.IsZero() && !c.until.IsZero() && !c.since.Before(c.until) {
		return c, fail(ErrInvalid, "match.since must be before match.until")
	}
	return c, nil
}

func (c matcher) matches(e *queue.Entry) bool {
	return (c.destination == "" || e.Destination == c.destination) &&
		(!c.hasStatus || e.LastStatus == c.status) &&
		(c.key == "" || strings.Contains(e.Key, c.key)) &&
		(c.since.IsZero() || !e.Died.Before(c.since)) &&
		(c.until.IsZero() || e.Died.Before(c.until))
}

// check refuses a selection that names more than one kind, and compiles
// its match.
func (s Selection) check() (matcher, error) {
	kinds := 0
	for _, given := range []bool{s.IDs != nil, s.All, s.Match != nil} {
		if given {
			kinds++
		}
	}
	if kinds > 1 {
		return matcher{}, fail(ErrInvalid, "give one of ids, all and match, not several")
	}
	if s.Match == nil {
		return matcher{}, nil
	}
	return s.Match.compile()
}

// matchPage is how many dead letters one step of a match reads: what a
// match holds in memory at once, and the length of each store call.
const matchPage = 500

// ReplaySelected puts the relay's dead letters that sel names back in its
// queue, wakes its deliveries, and says how many went back, also when it
// fails part way. A match goes through every dead letter, page by page
// (see eachMatching).
func ReplaySelected(ctx context.Context, relay string, sel Selection) (int, error) {
	return replaySelected(ctx, relay, sel, matchPage)
}

func replaySelected(ctx context.Context, relay string, sel Selection, page int) (int, error) {
	m, err := sel.check()
	if err != nil {
		return 0, err
	}
	switch {
	case sel.Match != nil:
		r, err := Find(relay)
		if err != nil {
			return 0, err
		}
		return eachMatching(ctx, r, m, page, time.Now(), func(ids []string) (int, error) {
			n, err := r.Store().Replay(ctx, ids)
			if n > 0 {
				r.Wake() // deliveries start on this page while the next is read
			}
			if err != nil {
				return n, storeError(err, "")
			}
			return n, nil
		})
	case sel.All:
		return Replay(ctx, relay, nil)
	case sel.IDs != nil:
		return Replay(ctx, relay, sel.IDs)
	}
	if _, err := Find(relay); err != nil {
		return 0, err
	}
	return 0, nil
}

// DeleteSelected deletes the relay's dead letters that sel names and says
// how many it deleted, also when it fails part way. All deletes those that
// died by now; a match goes through every dead letter, page by page (see
// eachMatching).
func DeleteSelected(ctx context.Context, relay string, sel Selection) (int, error) {
	return deleteSelected(ctx, relay, sel, matchPage)
}

func deleteSelected(ctx context.Context, relay string, sel Selection, page int) (int, error) {
	m, err := sel.check()
	if err != nil {
		return 0, err
	}
	switch {
	case sel.Match != nil:
		r, err := Find(relay)
		if err != nil {
			return 0, err
		}
		return eachMatching(ctx, r, m, page, time.Now(), func(ids []string) (int, error) {
			return deleteSome(ctx, r, ids)
		})
	case sel.All:
		return DeleteAll(ctx, relay, time.Now())
	case sel.IDs != nil:
		return DeleteSome(ctx, relay, sel.IDs)
	}
	if _, err := Find(relay); err != nil {
		return 0, err
	}
	return 0, nil
}

// eachMatching reads the relay's dead letters in id order, page letters
// per store call, and hands the ids of each page's matching letters to
// act; it adds up what act counts. So a match over 100,000 letters holds
// one page in memory at a time, and each store call is short: no store
// lock or Redis script is held for the whole.
//
// It acts on the letters that died by cutoff (the moment the operator
// asked): one that dies while it runs (a new one, or one it replayed
// failing again) is left for the next request. It ends: the next page
// starts after the last id read, ids only grow, and a replayed letter
// keeps its id, so a letter that dies again lies behind the cursor and is
// not read twice.
func eachMatching(ctx context.Context, r Relay, m matcher, page int, cutoff time.Time, act func(ids []string) (int, error)) (int, error) {
	n, after := 0, ""
	for {
		entries, err := r.Store().Dead(ctx, after, page)
		if err != nil {
			return n, storeError(err, "")
		}
		// a page may come back short while more follow (a letter
		// removed between the store's index and its record): only an
		// empty one is the end
		if len(entries) == 0 {
			return n, nil
		}
		var ids []string
		for _, e := range entries {
			if m.matches(e) && !e.Died.After(cutoff) {
				ids = append(ids, e.ID)
			}
		}
		if len(ids) > 0 {
			k, err := act(ids)
			n += k
			if err != nil {
				return n, err
			}
		}
		after = entries[len(entries)-1].ID
	}
}
