package caddytest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// opsAdmin is the harness's admin endpoint.
var opsAdmin = "http://" + adminAddr

// opsReply is one answer of the admin endpoint.
type opsReply struct {
	status int
	header http.Header
	body   []byte
}

// opsCall makes one request to the admin endpoint and reads the whole
// answer. body may be nil.
func opsCall(t *testing.T, method, path string, body []byte) opsReply {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, opsAdmin+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return opsReply{status: resp.StatusCode, header: resp.Header, body: b}
}

// opsJSON makes a request that must answer want, and decodes the JSON
// answer into v (unless v is nil).
func opsJSON(t *testing.T, method, path string, body []byte, want int, v any) opsReply {
	t.Helper()
	r := opsCall(t, method, path, body)
	if r.status != want {
		t.Fatalf("%s %s: status %d, want %d; body %s", method, path, r.status, want, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	if v != nil {
		if err := json.Unmarshal(r.body, v); err != nil {
			t.Fatalf("%s %s: answer is not the JSON expected: %v; body %s", method, path, err, r.body)
		}
	}
	return r
}

// opsExpectError checks that a request fails with status (or, when status
// is 0, with any 4xx) and a JSON {"error": "..."} body; it returns the
// status.
func opsExpectError(t *testing.T, method, path string, body []byte, status int) int {
	t.Helper()
	r := opsCall(t, method, path, body)
	if status != 0 && r.status != status {
		t.Errorf("%s %s: status %d, want %d; body %s", method, path, r.status, status, r.body)
	}
	if status == 0 && (r.status < 400 || r.status > 499) {
		t.Errorf("%s %s: status %d, want a 4xx error; body %s", method, path, r.status, r.body)
	}
	var e struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == nil || *e.Error == "" {
		t.Errorf("%s %s: want a JSON body {\"error\": \"...\"}, got %q", method, path, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: error Content-Type %q, want application/json", method, path, ct)
	}
	return r.status
}

// opsRelayStatus is one relay of GET /webhook_relay/.
type opsRelayStatus struct {
	Name          string           `json:"name"`
	Store         string           `json:"store"`
	UpstreamHost  string           `json:"upstream_host"`
	Backlog       *int             `json:"backlog"`
	InFlight      *int             `json:"in_flight"`
	DeadLetters   *int             `json:"dead_letters"`
	OldestQueued  *time.Time       `json:"oldest_queued"`
	Requests      map[string]int64 `json:"requests"`
	Deliveries    map[string]int64 `json:"deliveries"`
	Error         string           `json:"error"`
	Keys          *int             `json:"keys"`
	MemoryBytes   int64            `json:"memory_bytes"`
	DeadDropped   int64            `json:"dead_dropped"`
	MaxMemory     int64            `json:"max_memory"`
	MaxDead       int              `json:"max_dead"`
	DeadRetention string           `json:"dead_retention"`
	StoredBytes   int64            `json:"stored_bytes"`
	MaxStored     int64            `json:"max_stored"`
	Destinations  []opsDestination `json:"destinations"`
}

// opsDestination is one destination of a relay in the overview.
type opsDestination struct {
	Name   string `json:"name"`
	Paused bool   `json:"paused"`
}

// opsOverview returns the relay called name from GET /webhook_relay/, or
// nil when it is not listed.
func opsOverview(t *testing.T, name string) *opsRelayStatus {
	t.Helper()
	var all []opsRelayStatus
	opsJSON(t, http.MethodGet, "/webhook_relay/", nil, http.StatusOK, &all)
	for i := range all {
		if all[i].Name == name {
			return &all[i]
		}
	}
	return nil
}

// opsWaitOverview polls GET /webhook_relay/ until cond holds for the relay
// called name, and returns that state.
func opsWaitOverview(t *testing.T, name, what string, cond func(s *opsRelayStatus) bool) *opsRelayStatus {
	t.Helper()
	var s *opsRelayStatus
	testkit.Eventually(t, waitTimeout, func() bool {
		s = opsOverview(t, name)
		return s != nil && cond(s)
	}, "still waiting for %s; relay %s is %v", what, name, testkit.Lazy(func() string { return fmt.Sprintf("%+v", s) }))
	return s
}

func intOf(p *int) int {
	if p == nil {
		return -1
	}
	return *p
}

// opsDeadPage is GET /webhook_relay/<name>/dead, with each entry kept raw
// too so that absent fields can be told from zero ones.
type opsDeadPage struct {
	Entries []opsDeadLetter   `json:"entries"`
	Raw     []json.RawMessage `json:"-"`
	Next    string            `json:"next"`
}

type opsDeadLetter struct {
	ID          string    `json:"id"`
	Key         string    `json:"key"`
	Destination string    `json:"destination"`
	Received    time.Time `json:"received"`
	Attempts    int       `json:"attempts"`
	LastStatus  int       `json:"last_status"`
	LastError   string    `json:"last_error"`
	BodySize    int       `json:"body_size"`
	Body        *string   `json:"body"`
	BodyBase64  *string   `json:"body_base64"`
}

func opsListDead(t *testing.T, name, query string) opsDeadPage {
	t.Helper()
	path := "/webhook_relay/" + name + "/dead"
	if query != "" {
		path += "?" + query
	}
	var page opsDeadPage
	r := opsJSON(t, http.MethodGet, path, nil, http.StatusOK, &page)
	var raw struct {
		Entries []json.RawMessage `json:"entries"`
	}
	if err := json.Unmarshal(r.body, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Entries == nil {
		t.Errorf("GET %s: \"entries\" is missing or null, want a list: %s", path, r.body)
	}
	page.Raw = raw.Entries
	return page
}

func opsGetDead(t *testing.T, name, id string) (opsDeadLetter, map[string]json.RawMessage) {
	t.Helper()
	var d opsDeadLetter
	r := opsJSON(t, http.MethodGet, "/webhook_relay/"+name+"/dead/"+url.PathEscape(id), nil, http.StatusOK, &d)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &fields); err != nil {
		t.Fatal(err)
	}
	return d, fields
}

func opsReplay(t *testing.T, name string, body []byte) int {
	t.Helper()
	var out struct {
		Replayed *int `json:"replayed"`
	}
	opsJSON(t, http.MethodPost, "/webhook_relay/"+name+"/dead/replay", body, http.StatusOK, &out)
	if out.Replayed == nil {
		t.Fatalf("replay %s: no \"replayed\" count in the answer", body)
	}
	return *out.Replayed
}

// TestOpsAdminDeadLetters drives the admin API through the real Caddy: an
// upstream answering 422 makes dead letters, which are listed, paged,
// fetched with their body, replayed (one, none, all) and deleted.
func TestOpsAdminDeadLetters(t *testing.T) {
	var upOK atomic.Bool // once set, the upstream takes everything
	up := newUpstream(t, func(h *hit) reply {
		if !upOK.Load() && bytes.Contains(h.Body, []byte("poison")) {
			return reply{status: http.StatusUnprocessableEntity}
		}
		return reply{status: http.StatusOK}
	})
	name := relayName(t)
	// key body: any bytes are a payload, so a body that is not UTF-8 can
	// become a dead letter
	startCaddy(t, relayBlock(t, up.URL, "key body"))
	in := relayURL("/in", "")
	// the totals live in the process: a relay of this name counted before
	// (go test -count=2) continues from there
	base := opsOverview(t, name)
	if base == nil {
		t.Fatalf("relay %s is not listed by GET /webhook_relay/", name)
	}

	// three dead letters: JSON text with characters an encoder might
	// rewrite, a body that is not UTF-8, and a plain one
	text := []byte("{\"poison\":1, \"s\":\"h\u00e9llo \u2713 <tag> & \\\"q\\\" \\u00e9\",\n\t\"n\": 1.50e2 }  \n")
	binary := []byte("poison\x00\xff\xfe\x80 not utf-8 \xc3\x28 end")
	plain := []byte(`{"poison":3}`)
	bodies := [][]byte{text, binary, plain}
	sentAt := time.Now().Add(-time.Second)
	for _, b := range bodies {
		mustAccept(t, in, b, "Content-Type: application/octet-stream")
	}
	good := []byte(`{"fine":true}`)
	mustAccept(t, in, good)
	expectStatus(t, post(t, in, good), http.StatusOK, "duplicate")
	up.waitDelivered(t, good)
	hits := up.waitFor(t, "an attempt on each 422 payload", func(hits []*hit) bool {
		for _, b := range bodies {
			if len(withBody(hits, b)) == 0 {
				return false
			}
		}
		return true
	})
	keyOf := func(b []byte) string { return withBody(hits, b)[0].Key }

	st := opsWaitOverview(t, name, "3 dead letters and an empty backlog", func(s *opsRelayStatus) bool {
		return intOf(s.DeadLetters) == 3 && intOf(s.Backlog) == 0
	})
	t.Run("overview", func(t *testing.T) {
		if st.Store != "memory:"+name {
			t.Errorf("store %q, want %q", st.Store, "memory:"+name)
		}
		if st.UpstreamHost != up.Addr {
			t.Errorf("upstream_host %q, want %q", st.UpstreamHost, up.Addr)
		}
		if intOf(st.InFlight) != 0 {
			t.Errorf("in_flight %d, want 0", intOf(st.InFlight))
		}
		if st.OldestQueued != nil {
			t.Errorf("oldest_queued %v with an empty backlog, want none", st.OldestQueued)
		}
		if st.Error != "" {
			t.Errorf("error %q", st.Error)
		}
		wantReq := map[string]int64{"accepted": 4, "duplicate": 1, "unauthorized": 0, "too_large": 0,
			"bad_request": 0, "unavailable": 0, "method_not_allowed": 0, "challenge": 0}
		for k, v := range wantReq {
			if got, ok := st.Requests[k]; !ok || got != base.Requests[k]+v {
				t.Errorf("requests[%s] = %d (present %v), want %d+%d; all: %v", k, got, ok, base.Requests[k], v, st.Requests)
			}
		}
		wantDel := map[string]int64{"success": 1, "retry": 0, "dead": 3}
		for k, v := range wantDel {
			if got, ok := st.Deliveries[k]; !ok || got != base.Deliveries[k]+v {
				t.Errorf("deliveries[%s] = %d (present %v), want %d+%d; all: %v", k, got, ok, base.Deliveries[k], v, st.Deliveries)
			}
		}
	})

	// the whole list, then pages of two
	all := opsListDead(t, name, "")
	if len(all.Entries) != 3 || all.Next != "" {
		t.Fatalf("dead letters: %d entries, next %q; want 3 and no next", len(all.Entries), all.Next)
	}
	ids := make(map[string]string) // body -> id
	t.Run("list", func(t *testing.T) {
		for i, e := range all.Entries {
			var b []byte
			for _, cand := range bodies {
				if keyOf(cand) == e.Key {
					b = cand
				}
			}
			if b == nil {
				t.Errorf("entry %d: key %q is none of the Idempotency-Keys the upstream saw", i, e.Key)
				continue
			}
			ids[string(b)] = e.ID
			if e.ID == "" {
				t.Errorf("entry %d: empty id", i)
			}
			if e.Attempts != 1 || e.LastStatus != http.StatusUnprocessableEntity {
				t.Errorf("entry %d: attempts %d, last_status %d; want 1 and 422", i, e.Attempts, e.LastStatus)
			}
			if !strings.Contains(e.LastError, "422") {
				t.Errorf("entry %d: last_error %q does not say 422", i, e.LastError)
			}
			if e.BodySize != len(b) {
				t.Errorf("entry %d: body_size %d, want %d (the body's length)", i, e.BodySize, len(b))
			}
			if e.Received.Before(sentAt) || e.Received.After(time.Now().Add(time.Second)) {
				t.Errorf("entry %d: received %s, not when it was sent (%s)", i, e.Received, sentAt)
			}
			var fields map[string]json.RawMessage
			_ = json.Unmarshal(all.Raw[i], &fields)
			if _, ok := fields["body"]; ok {
				t.Errorf("entry %d: the listing carries the body", i)
			}
			if _, ok := fields["body_base64"]; ok {
				t.Errorf("entry %d: the listing carries body_base64", i)
			}
		}
		if len(ids) != 3 {
			t.Fatalf("the 3 dead letters map to %d distinct payloads", len(ids))
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("paging", func(t *testing.T) {
		p1 := opsListDead(t, name, "limit=2")
		if len(p1.Entries) != 2 || p1.Next == "" {
			t.Fatalf("first page of 2: %d entries, next %q", len(p1.Entries), p1.Next)
		}
		p2 := opsListDead(t, name, "limit=2&after="+url.QueryEscape(p1.Next))
		if len(p2.Entries) != 1 || p2.Next != "" {
			t.Fatalf("second page: %d entries, next %q; want 1 and no next", len(p2.Entries), p2.Next)
		}
		var got []string
		for _, e := range append(p1.Entries, p2.Entries...) {
			got = append(got, e.ID)
		}
		var want []string
		for _, e := range all.Entries {
			want = append(want, e.ID)
		}
		if !slices.Equal(got, want) {
			t.Errorf("pages hold %v, the whole list %v", got, want)
		}
		one := opsListDead(t, name, "limit=1&after="+url.QueryEscape(want[0]))
		if len(one.Entries) != 1 || one.Entries[0].ID != want[1] {
			t.Errorf("limit=1 after %s: %+v, want %s", want[0], one.Entries, want[1])
		}
	})

	t.Run("one with its body", func(t *testing.T) {
		d, fields := opsGetDead(t, name, ids[string(text)])
		if d.Body == nil || *d.Body != string(text) {
			t.Errorf("text dead letter: body %q, want byte-identical %q", ptrString(d.Body), text)
		}
		if _, ok := fields["body_base64"]; ok {
			t.Errorf("text dead letter also carries body_base64")
		}
		if d.BodySize != len(text) || d.LastStatus != 422 || d.Key != keyOf(text) {
			t.Errorf("text dead letter: %+v", d)
		}

		d, fields = opsGetDead(t, name, ids[string(binary)])
		if _, ok := fields["body"]; ok {
			t.Errorf("non-UTF-8 dead letter carries \"body\": %s", fields["body"])
		}
		if d.BodyBase64 == nil {
			t.Fatalf("non-UTF-8 dead letter: no body_base64")
		}
		raw, err := base64.StdEncoding.DecodeString(*d.BodyBase64)
		if err != nil || !bytes.Equal(raw, binary) {
			t.Errorf("non-UTF-8 dead letter: body_base64 decodes to %q (%v), want %q", raw, err, binary)
		}
		if d.BodySize != len(binary) {
			t.Errorf("non-UTF-8 dead letter: body_size %d, want %d", d.BodySize, len(binary))
		}
	})

	upOK.Store(true)
	t.Run("replay one", func(t *testing.T) {
		before := len(up.all())
		if n := opsReplay(t, name, []byte(`{"ids":["`+ids[string(text)]+`"]}`)); n != 1 {
			t.Errorf("replayed %d, want 1", n)
		}
		hits := up.waitDelivered(t, text)
		last := hits[len(hits)-1]
		if len(hits) != 2 || last.Attempt != 1 || last.Key != keyOf(text) || !bytes.Equal(last.Body, text) {
			t.Errorf("after the replay the upstream got %d requests with the body; the replay: attempt %d key %q; want attempt 1 key %q:\n%s",
				len(hits), last.Attempt, last.Key, keyOf(text), describe(hits))
		}
		opsExpectError(t, http.MethodGet, "/webhook_relay/"+name+"/dead/"+ids[string(text)], nil, http.StatusNotFound)
		if p := opsListDead(t, name, ""); len(p.Entries) != 2 {
			t.Errorf("%d dead letters after replaying one of 3, want 2", len(p.Entries))
		}
		for _, h := range up.all()[before:] {
			if !bytes.Equal(h.Body, text) {
				t.Errorf("replaying one dead letter sent another payload: %s", h)
			}
		}
	})

	t.Run("replay none", func(t *testing.T) {
		for _, body := range []string{`{"ids":[]}`, `{"ids":null}`, `{}`, `{"ids":["no-such-id"]}`} {
			if n := opsReplay(t, name, []byte(body)); n != 0 {
				t.Errorf("replay %s: replayed %d, want 0", body, n)
			}
			if p := opsListDead(t, name, ""); len(p.Entries) != 2 {
				t.Fatalf("replay %s: %d dead letters left, want 2", body, len(p.Entries))
			}
		}
		opsExpectError(t, http.MethodPost, "/webhook_relay/"+name+"/dead/replay", []byte(`{"ids":`), http.StatusBadRequest)
	})

	t.Run("delete", func(t *testing.T) {
		id := ids[string(plain)]
		var out map[string]string
		opsJSON(t, http.MethodDelete, "/webhook_relay/"+name+"/dead/"+id, nil, http.StatusOK, &out)
		if out["deleted"] != id {
			t.Errorf("DELETE answered %v", out)
		}
		opsExpectError(t, http.MethodDelete, "/webhook_relay/"+name+"/dead/"+id, nil, http.StatusNotFound)
		opsExpectError(t, http.MethodGet, "/webhook_relay/"+name+"/dead/"+id, nil, http.StatusNotFound)
	})

	t.Run("replay all", func(t *testing.T) {
		if n := opsReplay(t, name, nil); n != 1 {
			t.Errorf("replay all: replayed %d, want 1 (the one left)", n)
		}
		hits := up.waitDelivered(t, binary)
		last := hits[len(hits)-1]
		if last.Attempt != 1 || last.Key != keyOf(binary) {
			t.Errorf("replayed non-UTF-8 payload: attempt %d key %q, want 1 and %q", last.Attempt, last.Key, keyOf(binary))
		}
		if n := len(withBody(up.all(), plain)); n != 1 {
			t.Errorf("the deleted dead letter reached the upstream %d times, want only its first attempt", n)
		}
		st := opsWaitOverview(t, name, "no dead letters and an empty backlog", func(s *opsRelayStatus) bool {
			return intOf(s.DeadLetters) == 0 && intOf(s.Backlog) == 0
		})
		if st.Deliveries["success"] != base.Deliveries["success"]+3 || st.Deliveries["dead"] != base.Deliveries["dead"]+3 {
			t.Errorf("deliveries %v, want success %d+3 and dead %d+3", st.Deliveries, base.Deliveries["success"], base.Deliveries["dead"])
		}
		if n := opsReplay(t, name, nil); n != 0 {
			t.Errorf("replay all with no dead letters: replayed %d", n)
		}
	})

	t.Run("errors", func(t *testing.T) {
		opsExpectError(t, http.MethodGet, "/webhook_relay/no-such-relay-"+name+"/dead", nil, http.StatusNotFound)
		opsExpectError(t, http.MethodPost, "/webhook_relay/no-such-relay-"+name+"/dead/replay", nil, http.StatusNotFound)
		opsExpectError(t, http.MethodGet, "/webhook_relay/"+name+"/dead/00000000000000000999", nil, http.StatusNotFound)
		for _, limit := range []string{"0", "-1", "abc", "1001", "1.5", ""} {
			q := "limit=" + limit
			if limit == "" {
				q = "limit=%20"
			}
			opsExpectError(t, http.MethodGet, "/webhook_relay/"+name+"/dead?"+q, nil, http.StatusBadRequest)
		}
		for _, c := range []struct{ method, path string }{
			{http.MethodPost, "/webhook_relay/"},
			{http.MethodDelete, "/webhook_relay/"},
			{http.MethodPut, "/webhook_relay/" + name + "/dead"},
			{http.MethodPost, "/webhook_relay/" + name + "/dead"},
			{http.MethodDelete, "/webhook_relay/" + name + "/dead"},
			{http.MethodGet, "/webhook_relay/" + name + "/dead/replay"},
			{http.MethodPut, "/webhook_relay/" + name + "/dead/replay"},
			{http.MethodPatch, "/webhook_relay/" + name + "/dead/" + all.Entries[0].ID},
		} {
			status := opsExpectError(t, c.method, c.path, nil, 0)
			t.Logf("%s %s -> %d", c.method, c.path, status)
		}
	})
}

func ptrString(p *string) string {
	if p == nil {
		return "<absent>"
	}
	return *p
}
