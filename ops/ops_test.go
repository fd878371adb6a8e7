package ops

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// fakeRelay is a relay on the memory store, registered for one test.
type fakeRelay struct {
	name   string
	store  Store
	woken  atomic.Int32
	totals Totals
	bounds *Bounds
	dests  []string
}

func (r *fakeRelay) Name() string          { return r.name }
func (r *fakeRelay) StoreIdentity() string { return "memory" }
func (r *fakeRelay) Store() Store          { return r.store }
func (r *fakeRelay) InFlight() int         { return 2 }
func (r *fakeRelay) MemoryUsed() int64     { return 42 }
func (r *fakeRelay) Wake()                 { r.woken.Add(1) }
func (r *fakeRelay) Totals() Totals        { return r.totals }
func (r *fakeRelay) Destinations() []string {
	if r.dests == nil {
		return []string{"upstream"}
	}
	return r.dests
}
func (r *fakeRelay) Bounds() (Bounds, bool) {
	if r.bounds == nil {
		return Bounds{}, false
	}
	return *r.bounds, true
}

// newRelay registers a relay called name with n dead letters, and
// unregisters it when the test ends.
func newRelay(t *testing.T, name string, n int) (*fakeRelay, *queue.Memory) {
	t.Helper()
	mem := queue.NewMemory(queue.Options{Window: time.Hour, MaxBacklog: 1000})
	ctx := context.Background()
	for i := range n {
		e := &queue.Entry{Key: fmt.Sprint("k", i), Body: []byte(fmt.Sprintf(`{"n":%d}`, i))}
		if _, err := mem.Admit(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	claimed, err := mem.Claim(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range claimed {
		e.Attempts, e.LastStatus, e.LastError = 3, 500, "upstream said no"
		if err := mem.Bury(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	r := &fakeRelay{name: name, store: mem}
	Register(r)
	t.Cleanup(func() { Unregister(r) })
	return r, mem
}

func TestFindUnknownRelay(t *testing.T) {
	newRelay(t, "known", 0)
	_, err := Find("nope")
	if !errors.Is(err, ErrNoRelay) || err.Error() != `no relay named "nope" is running` {
		t.Fatalf("Find(nope) = %v", err)
	}
	if _, err := ShowDead(context.Background(), "nope", "1"); !errors.Is(err, ErrNoRelay) {
		t.Errorf("ShowDead on an unknown relay: %v", err)
	}
}

func TestFindTakesTheNewestGeneration(t *testing.T) {
	old, _ := newRelay(t, "twice", 0)
	newer, _ := newRelay(t, "twice", 0)
	if r, _ := Find("twice"); r != newer {
		t.Errorf("Find during a store change = %p, want the newer %p (old %p)", r, newer, old)
	}
	Unregister(newer)
	if r, _ := Find("twice"); r != old {
		t.Errorf("after the newer one is gone, Find = %p, want %p", r, old)
	}
}

func TestStatus(t *testing.T) {
	r, _ := newRelay(t, "status", 2)
	r.totals = Totals{Requests: map[string]int64{"accepted": 2}, Deliveries: map[string]int64{"dead": 2}, DeadDropped: 1}
	s := Status(context.Background(), r)
	if s.Name != "status" || s.Store != "memory" || s.DeadLetters != 2 || s.InFlight != 2 || s.MemoryBytes != 42 ||
		s.Requests["accepted"] != 2 || s.Deliveries["dead"] != 2 || s.DeadDropped != 1 || s.Error != "" {
		t.Errorf("status = %+v", s)
	}
	if s.DeadRetention != "" || s.UpstreamHost != "" {
		t.Errorf("without a config the bounds are empty, got %+v", s)
	}
	r.bounds = &Bounds{UpstreamHost: "app:3000", MaxMemory: 1 << 20, MaxDead: 7, DeadRetention: time.Hour}
	s = Status(context.Background(), r)
	if s.UpstreamHost != "app:3000" || s.MaxMemory != 1<<20 || s.MaxDead != 7 || s.DeadRetention != "1h0m0s" {
		t.Errorf("bounds = %+v", s)
	}
}

func TestListDeadPagesAndShow(t *testing.T) {
	newRelay(t, "pages", 5)
	ctx := context.Background()
	var ids []string
	for after := ""; ; {
		page, err := ListDead(ctx, "pages", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Entries {
			if d.Body != nil || d.Request != nil || d.LastStatus != 500 || d.BodySize == 0 {
				t.Errorf("listed %+v: want no body, the last status and the size", d)
			}
			ids = append(ids, d.ID)
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	if len(ids) != 5 {
		t.Fatalf("paged through %d dead letters, want 5", len(ids))
	}
	d, err := ShowDead(ctx, "pages", ids[0])
	if err != nil || d.Body == nil || *d.Body != `{"n":0}` || d.Request == nil {
		t.Errorf("ShowDead = %+v, %v", d, err)
	}
	_, err = ShowDead(ctx, "pages", "nope")
	if !errors.Is(err, ErrNotFound) || err.Error() != `no dead letter with id "nope"` {
		t.Errorf("ShowDead(nope) = %v", err)
	}
	if _, err := ListDead(ctx, "pages", "", 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("a limit of 0: %v", err)
	}
}

func TestParseLimit(t *testing.T) {
	for in, want := range map[string]int{"": DefaultPage, "1": 1, "1000": 1000} {
		if got, err := ParseLimit(in); got != want || err != nil {
			t.Errorf("ParseLimit(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"0", "1001", "x", "-1"} {
		if _, err := ParseLimit(in); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "from 1 to 1000") {
			t.Errorf("ParseLimit(%q): %v", in, err)
		}
	}
}

func TestReplayWakes(t *testing.T) {
	r, mem := newRelay(t, "replay", 3)
	ctx := context.Background()
	page, _ := ListDead(ctx, "replay", "", 10)
	n, err := Replay(ctx, "replay", []string{page.Entries[0].ID, "nope"})
	if n != 1 || err != nil || r.woken.Load() != 1 {
		t.Fatalf("Replay one = %d, %v (woken %d)", n, err, r.woken.Load())
	}
	if n, err = Replay(ctx, "replay", nil); n != 2 || err != nil {
		t.Fatalf("Replay all = %d, %v", n, err)
	}
	if st, _ := mem.Stats(ctx); st.Dead != 0 || st.Backlog != 3 {
		t.Errorf("after replays: %+v", st)
	}
}

func TestDelete(t *testing.T) {
	newRelay(t, "delete", 4)
	ctx := context.Background()
	page, _ := ListDead(ctx, "delete", "", 10)
	if err := Delete(ctx, "delete", page.Entries[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, "delete", page.Entries[0].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting twice: %v", err)
	}
	n, err := DeleteSome(ctx, "delete", []string{page.Entries[0].ID, page.Entries[1].ID})
	if n != 1 || err != nil {
		t.Errorf("DeleteSome skips the one gone: %d, %v", n, err)
	}
	if n, err := DeleteAll(ctx, "delete", time.Now().Add(-time.Hour)); n != 0 || err != nil {
		t.Errorf("DeleteAll before they died = %d, %v", n, err)
	}
	if n, err := DeleteAll(ctx, "delete", time.Now()); n != 2 || err != nil {
		t.Errorf("DeleteAll = %d, %v", n, err)
	}
}

// brokenStore is a store that cannot be reached.
type brokenStore struct{ Store }

var errDown = errors.New("connection refused")

func (brokenStore) Stats(context.Context) (queue.Stats, error) { return queue.Stats{}, errDown }
func (brokenStore) Dead(context.Context, string, int) ([]*queue.Entry, error) {
	return nil, errDown
}
func (brokenStore) DeleteDead(context.Context, string) error { return errDown }

func TestStoreUnavailable(t *testing.T) {
	r, _ := newRelay(t, "broken", 1)
	r.store = brokenStore{r.store}
	ctx := context.Background()
	if s := Status(ctx, r); s.Error != "store unavailable: connection refused" || s.InFlight != 2 {
		t.Errorf("status of a broken store = %+v", s)
	}
	_, err := ListDead(ctx, "broken", "", 10)
	if !errors.Is(err, ErrStore) || !errors.Is(err, errDown) || errors.Is(err, ErrNotFound) {
		t.Errorf("ListDead on a broken store: %v", err)
	}
	if _, err := DeleteSome(ctx, "broken", []string{"1"}); !errors.Is(err, ErrStore) {
		t.Errorf("DeleteSome on a broken store: %v", err)
	}
}

func TestHTTPError(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{fail(ErrNoRelay, "x"), 404},
		{fail(ErrNotFound, "x"), 404},
		{fail(ErrNoDestination, "x"), 404},
		{fail(ErrInvalid, "x"), 400},
		{storeError(errDown, ""), 503},
		{errors.New("something else"), 500},
		{caddy.APIError{HTTPStatus: 403, Err: errors.New("refused")}, 403},
	} {
		if got := HTTPError(c.err); got.HTTPStatus != c.want || got.Err.Error() != c.err.Error() {
			t.Errorf("HTTPError(%v) = %d %v, want %d", c.err, got.HTTPStatus, got.Err, c.want)
		}
	}
}

func TestAdminRoutes(t *testing.T) {
	newRelay(t, "admin", 2)
	page, _ := ListDead(context.Background(), "admin", "", 10)
	id := page.Entries[0].ID
	for _, c := range []struct {
		method, path, body string
		status             int
		has                string
	}{
		{"GET", "/webhook_relay/", "", 200, `"name":"admin"`},
		{"POST", "/webhook_relay/", "", 405, "use GET"},
		{"GET", "/webhook_relay/nope/dead", "", 404, `no relay named \"nope\"`},
		{"GET", "/webhook_relay/admin/dead?limit=x", "", 400, "limit"},
		{"GET", "/webhook_relay/admin/dead?limit=1", "", 200, `"next":"` + id + `"`},
		{"GET", "/webhook_relay/admin/dead/" + id, "", 200, `"body":"{\"n\":0}"`},
		{"GET", "/webhook_relay/admin/dead/nope", "", 404, `no dead letter with id \"nope\"`},
		{"POST", "/webhook_relay/admin/dead/replay", `{"ids":`, 400, "want no body"},
		{"POST", "/webhook_relay/admin/dead/replay", `{}`, 200, `"replayed":0`},
		{"POST", "/webhook_relay/admin/dead/replay", `{"match":{}}`, 400, "match needs at least one field"},
		{"POST", "/webhook_relay/admin/dead/replay", `{"match":{"since":"today"}}`, 400, "match.since"},
		{"POST", "/webhook_relay/admin/dead/replay", `{"match":{"stauts":500}}`, 400, `unknown field \"stauts\"`},
		{"POST", "/webhook_relay/admin/dead/replay", `{"all":true,"ids":["1"]}`, 400, "give one of ids, all and match"},
		{"POST", "/webhook_relay/admin/dead/replay", `{"match":{"status":404}}`, 200, `"replayed":0`},
		{"POST", "/webhook_relay/admin/dead/delete", ``, 400, `want {\"ids\"`},
		{"POST", "/webhook_relay/admin/dead/delete", `{}`, 200, `"deleted":0`},
		{"POST", "/webhook_relay/admin/dead/delete", `{"match":{"key":"k"}} {}`, 400, "one JSON object only"},
		{"DELETE", "/webhook_relay/admin/dead/" + id, "", 200, `"deleted":"` + id + `"`},
		{"POST", "/webhook_relay/admin/dead/delete", `{"match":{"status":500,"key":"k"}}`, 200, `"deleted":1`},
		{"GET", "/webhook_relay/admin/dead", "", 200, `"entries":[]`},
		{"PUT", "/webhook_relay/admin/dead", "", 405, "method not allowed"},
		{"GET", "/webhook_relay/admin/other", "", 404, "unknown route"},
		{"POST", "/webhook_relay/admin/destinations/upstream/pause", "", 200, `"destinations":[{"name":"upstream","paused":true,"backlog":0}]`},
		{"GET", "/webhook_relay/admin/destinations/upstream/pause", "", 405, "method not allowed"},
		{"POST", "/webhook_relay/admin/destinations/nope/pause", "", 404, `relay \"admin\" has no destination \"nope\"; its destinations: upstream`},
		{"POST", "/webhook_relay/nope/pause", "", 404, `no relay named \"nope\"`},
		{"POST", "/webhook_relay/admin/resume", "", 200, `"destinations":[{"name":"upstream","paused":false,"backlog":0}]`},
		{"GET", "/webhook_relay/admin/pause", "", 405, "method not allowed"},
	} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
		err := adminAPI{}.serve(w, r)
		status, body := w.Code, w.Body.String()
		if err != nil {
			ae, ok := err.(caddy.APIError) // as Caddy's admin server takes it
			if !ok {
				t.Errorf("%s %s: the error %v is not a caddy.APIError", c.method, c.path, err)
				continue
			}
			status, body = ae.HTTPStatus, fmt.Sprintf("%q", ae.Err.Error())
		}
		if status != c.status || !strings.Contains(body, c.has) {
			t.Errorf("%s %s: %d %s, want %d with %s", c.method, c.path, status, body, c.status, c.has)
		}
	}
}

// A pause names one destination or, without a name, all of the relay's;
// it is kept in the store, shown in the status, and wakes the deliveries.
func TestSetPaused(t *testing.T) {
	r, mem := newRelay(t, "pausing", 0)
	r.dests = []string{"app", "archive"}
	ctx := context.Background()

	res, err := SetPaused(ctx, "pausing", "archive", true)
	if err != nil {
		t.Fatal(err)
	}
	want := []DestinationStatus{{Name: "app"}, {Name: "archive", Paused: true}}
	if fmt.Sprint(res.Destinations) != fmt.Sprint(want) || res.Relay != "pausing" {
		t.Errorf("SetPaused(archive) = %+v, want %+v", res, want)
	}
	if got, _ := mem.Paused(ctx); fmt.Sprint(got) != "[archive]" {
		t.Errorf("the store has %v paused, want [archive]", got)
	}
	if r.woken.Load() != 1 {
		t.Errorf("woken %d times, want once", r.woken.Load())
	}
	if s := Status(ctx, r); fmt.Sprint(s.Destinations) != fmt.Sprint(want) {
		t.Errorf("status destinations = %+v, want %+v", s.Destinations, want)
	}

	if res, err = SetPaused(ctx, "pausing", "", true); err != nil || !res.Destinations[0].Paused || !res.Destinations[1].Paused {
		t.Errorf("pause all = %+v, %v; want both paused", res, err)
	}
	if res, err = SetPaused(ctx, "pausing", "", false); err != nil || res.Destinations[0].Paused || res.Destinations[1].Paused {
		t.Errorf("resume all = %+v, %v; want neither paused", res, err)
	}

	_, err = SetPaused(ctx, "pausing", "nope", true)
	if !errors.Is(err, ErrNoDestination) || err.Error() != `relay "pausing" has no destination "nope"; its destinations: app, archive` {
		t.Errorf("unknown destination: %v", err)
	}
	if _, err := SetPaused(ctx, "nope", "", true); !errors.Is(err, ErrNoRelay) {
		t.Errorf("unknown relay: %v", err)
	}
}
