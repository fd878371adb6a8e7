package caddytest

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// opsAct posts a selection to the relay's dead/replay or dead/delete and
// returns the count answered (replayed or deleted).
func opsAct(t *testing.T, name, verb, body string) int {
	t.Helper()
	var out map[string]*int
	opsJSON(t, http.MethodPost, "/webhook_relay/"+name+"/dead/"+verb, []byte(body), http.StatusOK, &out)
	field := map[string]string{"replay": "replayed", "delete": "deleted"}[verb]
	if out[field] == nil {
		t.Fatalf("%s %s: no %q count in the answer", verb, body, field)
	}
	return *out[field]
}

// TestOpsAdminMatch replays and deletes dead letters by match through the
// admin API of a real Caddy: the letters carry their destination, a match
// on status and key replays exactly its letters (delivered again, once),
// a match on status deletes exactly its own, bad matches are refused.
func TestOpsAdminMatch(t *testing.T) {
	var fixed atomic.Bool
	up := newUpstream(t, func(h *hit) reply {
		switch {
		case fixed.Load():
			return reply{status: http.StatusOK}
		case strings.Contains(string(h.Body), `"want":422`):
			return reply{status: http.StatusUnprocessableEntity}
		case strings.Contains(string(h.Body), `"want":400`):
			return reply{status: http.StatusBadRequest}
		}
		return reply{status: http.StatusOK}
	})
	name := relayName(t)
	startCaddy(t, relayBlock(t, up.URL, "key json.id"))
	in := relayURL("/in", "")

	run := payloadSeq.Add(1) // keys of this run's own (go test -count=2)
	body := func(id string, status int) []byte {
		return fmt.Appendf(nil, `{"id":"%s-%d","want":%d}`, id, run, status)
	}
	letters := map[string][]byte{
		"order-1": body("order-1", 422), "order-2": body("order-2", 400), "order-3": body("order-3", 422),
		"invoice-4": body("invoice-4", 422), "invoice-5": body("invoice-5", 400),
	}
	before := time.Now().Add(-time.Second).UTC()
	for _, b := range letters {
		mustAccept(t, in, b)
	}
	fine := body("order-6", 200)
	mustAccept(t, in, fine)
	up.waitDelivered(t, fine)
	opsWaitOverview(t, name, "5 dead letters", func(s *opsRelayStatus) bool {
		return intOf(s.DeadLetters) == 5 && intOf(s.Backlog) == 0
	})
	// the letter a key is of: the key is "json.id:<id>-<run>"
	letterOf := func(key string) string {
		return strings.TrimSuffix(strings.TrimPrefix(key, "json.id:"), fmt.Sprint("-", run))
	}
	ids := map[string]string{} // letter -> id
	for _, e := range opsListDead(t, name, "").Entries {
		ids[letterOf(e.Key)] = e.ID
		if e.Destination != "upstream" {
			t.Errorf("dead letter %s: destination %q, want %q", e.Key, e.Destination, "upstream")
		}
	}
	if len(ids) != 5 {
		t.Fatalf("dead letters by key: %v", ids)
	}
	if d, _ := opsGetDead(t, name, ids["order-1"]); d.Destination != "upstream" {
		t.Errorf("one dead letter: destination %q, want %q", d.Destination, "upstream")
	}
	left := func() []string {
		var keys []string
		for _, e := range opsListDead(t, name, "").Entries {
			keys = append(keys, letterOf(e.Key))
		}
		slices.Sort(keys)
		return keys
	}

	t.Run("refused", func(t *testing.T) {
		for _, c := range []struct{ body, says string }{
			{`{"match":{}}`, "match needs at least one field; use all to act on every letter"},
			{`{"match":{"status":422,"since":"yesterday"}}`, "match.since"},
			{`{"match":{"key":"order","until":"2026-12-06 20:00"}}`, "match.until"},
			{`{"match":{"stauts":422}}`, "stauts"},
			{`{"all":true,"match":{"status":422}}`, "give one of ids, all and match"},
		} {
			for _, verb := range []string{"replay", "delete"} {
				r := opsCall(t, http.MethodPost, "/webhook_relay/"+name+"/dead/"+verb, []byte(c.body))
				if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), c.says) {
					t.Errorf("%s %s: %d %s, want 400 saying %q", verb, c.body, r.status, r.body, c.says)
				}
			}
		}
		opsExpectError(t, http.MethodPost, "/webhook_relay/"+name+"/dead/delete", nil, http.StatusBadRequest)
		opsExpectError(t, http.MethodPost, "/webhook_relay/no-such-relay-"+name+"/dead/delete", []byte(`{"match":{"status":400}}`), http.StatusNotFound)
		if got := left(); len(got) != 5 {
			t.Fatalf("refused requests changed the dead letters: %v", got)
		}
	})

	t.Run("matching nothing", func(t *testing.T) {
		for _, b := range []string{
			`{"match":{"destination":"archive"}}`,
			`{"match":{"status":422,"key":"nothing-like-it"}}`,
			`{"match":{"until":"` + before.Format(time.RFC3339Nano) + `"}}`,
			`{"match":{"since":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}}`,
		} {
			if n := opsAct(t, name, "replay", b); n != 0 {
				t.Errorf("replay %s = %d, want 0", b, n)
			}
		}
	})

	fixed.Store(true)
	t.Run("replay by match", func(t *testing.T) {
		n := opsAct(t, name, "replay", fmt.Sprintf(`{"match":{"destination":"upstream","status":422,"key":"order-","since":%q,"until":%q}}`,
			before.Format(time.RFC3339Nano), time.Now().Add(time.Minute).UTC().Format(time.RFC3339)))
		if n != 2 {
			t.Errorf("replayed %d, want 2 (order-1 and order-3)", n)
		}
		for _, k := range []string{"order-1", "order-3"} {
			hits := up.waitDelivered(t, letters[k])
			if len(hits) != 2 || hits[1].Attempt != 1 {
				t.Errorf("%s: %d requests, the replay attempt %d; want 2 and attempt 1", k, len(hits), hits[len(hits)-1].Attempt)
			}
		}
		opsWaitOverview(t, name, "the replayed letters delivered", func(s *opsRelayStatus) bool { return intOf(s.Backlog) == 0 })
		if got, want := left(), []string{"invoice-4", "invoice-5", "order-2"}; !slices.Equal(got, want) {
			t.Errorf("dead letters left %v, want %v", got, want)
		}
	})

	t.Run("delete by match", func(t *testing.T) {
		if n := opsAct(t, name, "delete", `{"match":{"status":400}}`); n != 2 {
			t.Errorf("deleted %d, want 2 (the 400s)", n)
		}
		if got, want := left(), []string{"invoice-4"}; !slices.Equal(got, want) {
			t.Errorf("dead letters left %v, want %v", got, want)
		}
		if n := opsAct(t, name, "delete", `{"match":{"destination":"upstream"}}`); n != 1 {
			t.Errorf("deleted %d by destination, want 1", n)
		}
		if got := left(); len(got) != 0 {
			t.Errorf("dead letters left %v, want none", got)
		}
		for _, k := range []string{"order-2", "invoice-4", "invoice-5"} {
			if n := len(withBody(up.all(), letters[k])); n != 1 {
				t.Errorf("%s reached the upstream %d times, want its first attempt only", k, n)
			}
		}
	})
}
