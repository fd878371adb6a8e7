package ops

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// eventsRelay is a relay on the memory store with history, holding n
// payloads with keys task-00000 on, a second apart.
func eventsRelay(t *testing.T, name string, n int) (*fakeRelay, *queue.Memory, *fixedClock) {
	t.Helper()
	clock := &fixedClock{now: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	mem := queue.NewMemory(queue.Options{Window: time.Hour, History: time.Hour, Now: clock.Now})
	t.Cleanup(func() { _ = mem.Close() })
	for i := range n {
		e := &queue.Entry{Key: fmt.Sprintf("task-%05d", i), Destination: "upstream", Body: []byte(`{"ok":true}`)}
		if a, err := mem.Admit(context.Background(), e); err != nil || a != queue.Accepted {
			t.Fatalf("Admit = %v, %v", a, err)
		}
		clock.Advance(time.Second)
	}
	r := &fakeRelay{name: name, store: mem}
	Register(r)
	t.Cleanup(func() { Unregister(r) })
	return r, mem, clock
}

func search(t *testing.T, query string) (EventSearch, error) {
	t.Helper()
	q, err := url.ParseQuery(query)
	if err != nil {
		t.Fatal(err)
	}
	return ParseEventSearch(q)
}

// TestEventsListAndShow: pages newest first with next, search by key,
// state and time, one event with its attempts and body, resend.
func TestEventsListAndShow(t *testing.T) {
	ctx := context.Background()
	r, mem, clock := eventsRelay(t, "events-list", 25)
	lane := mem.Lane("upstream")
	claimed, _ := lane.Claim(ctx, 1)
	at := clock.Now()
	if err := lane.(queue.Recorder).Attempted(ctx, claimed[0], queue.Attempt{Destination: "upstream", At: at, Status: 200, DurationMS: 12}, queue.StateDelivered); err != nil {
		t.Fatal(err)
	}
	if err := lane.Ack(ctx, claimed[0].ID); err != nil {
		t.Fatal(err)
	}

	var seen []string
	s, _ := search(t, "limit=10")
	for pages := 0; ; pages++ {
		page, err := ListEvents(ctx, "events-list", s)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Entries {
			seen = append(seen, e.Key)
		}
		if page.Next == "" || pages > 5 {
			break
		}
		s.After = page.Next
	}
	if len(seen) != 25 || seen[0] != "task-00024" || seen[24] != "task-00000" {
		t.Fatalf("paged %d events, %v...; want 25 newest first", len(seen), seen[:min(3, len(seen))])
	}

	s, _ = search(t, "state=delivered")
	page, err := ListEvents(ctx, "events-list", s)
	if err != nil || len(page.Entries) != 1 || page.Entries[0].Key != "task-00000" {
		t.Fatalf("state=delivered: %+v, %v; want task-00000", page.Entries, err)
	}
	start := at.Add(-25 * time.Second)
	s, _ = search(t, "key=TASK-0001&since="+url.QueryEscape(start.Add(11*time.Second).Format(time.RFC3339)))
	page, err = ListEvents(ctx, "events-list", s)
	if err != nil || len(page.Entries) != 9 {
		t.Fatalf("key and since: %d events, %v; want task-00010 to task-00019 but task-00010 (received before since)", len(page.Entries), err)
	}

	e, err := ShowEvent(ctx, "events-list", claimed[0].Payload)
	if err != nil || e.Body == nil || *e.Body != `{"ok":true}` || len(e.Attempts) != 1 || e.Attempts[0].Status != 200 || e.Request == nil {
		t.Fatalf("ShowEvent = %+v, %v; want the body and the 200", e, err)
	}
	if n, err := Resend(ctx, "events-list", e.ID); err != nil || n != 1 || r.woken.Load() == 0 {
		t.Fatalf("Resend = %d, %v (woken %d); want 1 and the deliveries woken", n, err, r.woken.Load())
	}
	if _, err := Resend(ctx, "events-list", e.ID); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not delivered anywhere yet") {
		t.Errorf("Resend of a queued event = %v, want ErrInvalid saying it is not delivered", err)
	}
}

// TestEventsRefused: an unknown relay or event is not found; a state, a
// time or a limit that cannot be is invalid, each with a message.
func TestEventsRefused(t *testing.T) {
	ctx := context.Background()
	eventsRelay(t, "events-refused", 2)
	for _, c := range []struct{ query, want string }{
		{"state=done", `state "done": want queued, retrying, delivered or dead`},
		{"since=yesterday", "since: want an RFC 3339 time"},
		{"since=2026-12-06T12:00:00Z&until=2026-12-06T11:00:00Z", "since must be before until"},
		{"limit=0", "limit: want a whole number"},
	} {
		if _, err := search(t, c.query); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalid with %q", c.query, err, c.want)
		}
	}
	s, _ := search(t, "")
	if _, err := ListEvents(ctx, "no-such-relay", s); !errors.Is(err, ErrNoRelay) {
		t.Errorf("unknown relay: %v, want ErrNoRelay", err)
	}
	if _, err := ShowEvent(ctx, "events-refused", "0042"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `no event with id "0042"`) {
		t.Errorf("unknown event: %v, want ErrNotFound naming it", err)
	}
	// a short key is fine on a small relay
	s, _ = search(t, "key=ta")
	if page, err := ListEvents(ctx, "events-refused", s); err != nil || len(page.Entries) != 2 {
		t.Errorf("key=ta on 2 records: %d events, %v", len(page.Entries), err)
	}
}

// TestEventsShortKeyOnManyRecords: past ShortKeySearchLimit records, a key
// search shorter than MinKeySearch is refused, saying why; a longer one
// is served.
func TestEventsShortKeyOnManyRecords(t *testing.T) {
	ctx := context.Background()
	eventsRelay(t, "events-many", ShortKeySearchLimit+1)
	s, _ := search(t, "key=ta")
	if _, err := ListEvents(ctx, "events-many", s); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "at least 3 characters") {
		t.Fatalf("key=ta on %d records: %v, want ErrInvalid asking for 3 characters", ShortKeySearchLimit+1, err)
	}
	s, _ = search(t, "key=task-10000")
	if page, err := ListEvents(ctx, "events-many", s); err != nil || len(page.Entries) != 1 {
		t.Fatalf("key=task-10000: %d events, %v; want 1", len(page.Entries), err)
	}
}

// scanCounter is a store that records what each Events call was asked for.
type scanCounter struct {
	Store
	calls, maxScan int
}

func (s *scanCounter) Events(ctx context.Context, q queue.EventQuery) ([]*queue.Record, string, error) {
	s.calls++
	scan := q.Scan
	if scan <= 0 {
		scan = queue.DefaultEventScan
	}
	s.maxScan = max(s.maxScan, scan)
	return s.Store.Events(ctx, q)
}

// TestEventsPageOver100000: a search that matches only the oldest of
// 100,000 records answers in bounded pages, each looking at no more than
// eventScanCalls store calls of queue.DefaultEventScan records, and paging
// on reaches it.
func TestEventsPageOver100000(t *testing.T) {
	ctx := context.Background()
	r, _, _ := eventsRelay(t, "events-100k", 100_000)
	sc := &scanCounter{Store: r.store}
	r.store = sc
	s, _ := search(t, "key=task-00000&limit=10")
	pages, found := 0, 0
	for {
		page, err := ListEvents(ctx, "events-100k", s)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		found += len(page.Entries)
		if page.Next == "" {
			break
		}
		s.After = page.Next
	}
	if found != 1 {
		t.Fatalf("found %d records with key task-00000, want 1", found)
	}
	// what the API documents: a page looks at 50,000 records at most, in
	// calls of 5,000
	if sc.maxScan > 5000 || sc.calls > pages*10 {
		t.Errorf("%d store calls over %d pages, the largest looking at %d records; want at most 10 a page of 5000 each",
			sc.calls, pages, sc.maxScan)
	}
	if pages < 2 {
		t.Errorf("%d page(s) for 100,000 records: a page looked at more than 50,000", pages)
	}
	t.Logf("100,000 records: %d pages, %d store calls, at most %d records looked at per call", pages, sc.calls, sc.maxScan)
}
