package caddytest

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/ops"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// TestHistoryEvents: "did task X reach the app?" through the admin API.
// A Runware task's two results (one batch: the same taskUUID) reach the
// app, one after a 503; the archive takes the images. The events search by
// taskUUID finds both, with each destination's state and every attempt;
// one shows its body; resend delivers it again with the same
// Idempotency-Key. On every store the relay runs with in one process.
func TestHistoryEvents(t *testing.T) {
	for _, store := range []string{"memory", "bolt"} {
		t.Run(store, func(t *testing.T) { testHistoryEvents(t, store) })
	}
}

func testHistoryEvents(t *testing.T, store string) {
	// the app refuses the first result once (503); the archive, on the
	// same server, takes everything
	var refused atomic.Bool
	app := newUpstream(t, func(h *hit) reply {
		if h.Path == "/app" && bytes.Contains(h.Body, []byte(`"first"`)) && refused.CompareAndSwap(false, true) {
			return reply{status: http.StatusServiceUnavailable}
		}
		return reply{status: http.StatusOK}
	})
	name := relayName(t)
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		name %s
		store %s
		backoff 10ms 50ms
		destination app %s/app
		destination archive %s/archive {
			filter `+"`"+`has(body.data) && body.data.exists(d, has(d.imageURL))`+"`"+`
		}
	}`, name, store, app.URL, app.URL)))
	task := fmt.Sprintf("6f1c2a9e-%d-4b1f-8c3d-%012d", time.Now().UnixNano()%100000, payloadSeq.Add(1))
	first := testkit.RunwareResult(task, "img-a", `"imageURL":"https://im.runware.ai/a.jpg"`, `"note":"first"`)
	second := testkit.RunwareResult(task, "img-b", `"imageBase64Data":"AAAA"`)
	other := testkit.RunwareResult(task+"-other", "img-c")
	for _, b := range [][]byte{first, second, other} {
		mustAccept(t, relayURL("/in", ""), b, "Content-Type: application/json")
	}
	app.waitDelivered(t, first)
	app.waitDelivered(t, second)

	events := "/webhook_relay/" + url.PathEscape(name) + "/events"
	var page ops.EventPage
	// every result delivered everywhere: all three found by a part of the
	// task's key, in state delivered
	testkit.Eventually(t, waitTimeout, func() bool {
		opsJSON(t, http.MethodGet, events+"?key="+url.QueryEscape(task[:13])+"&state=delivered", nil, http.StatusOK, &page)
		return len(page.Entries) == 3
	}, "3 delivered events with key %s...; the last search found %s", task[:13], testkit.Lazy(func() string { return fmt.Sprint(len(page.Entries)) }))
	opsJSON(t, http.MethodGet, events+"?key="+url.QueryEscape(task+"/"), nil, http.StatusOK, &page)
	if len(page.Entries) != 2 {
		t.Fatalf("events with key %s: %d, want the task's two results: %+v", task, len(page.Entries), page.Entries)
	}
	byImage := map[string]ops.Event{}
	for _, e := range page.Entries {
		var ev ops.Event
		opsJSON(t, http.MethodGet, events+"/"+url.PathEscape(e.ID), nil, http.StatusOK, &ev)
		switch ptrString(ev.Body) {
		case string(first):
			byImage["a"] = ev
		case string(second):
			byImage["b"] = ev
		}
	}
	a, b := byImage["a"], byImage["b"]
	if a.State != queue.StateDelivered || len(a.Destinations) != 2 || b.State != queue.StateDelivered || len(b.Destinations) != 1 {
		t.Fatalf("first result: %s with %d destinations; second: %s with %d; want delivered to app and archive, and to the app alone",
			a.State, len(a.Destinations), b.State, len(b.Destinations))
	}
	var statuses []int
	for _, at := range a.Attempts {
		if at.Destination == "app" {
			statuses = append(statuses, at.Status)
			if at.At.IsZero() || at.DurationMS < 0 {
				t.Errorf("attempt %+v: no time or a negative duration", at)
			}
			if at.Status == http.StatusServiceUnavailable && at.Error == "" {
				t.Errorf("the 503 attempt has no error text: %+v", at)
			}
		}
	}
	if fmt.Sprint(statuses) != "[503 200]" {
		t.Errorf("the app's attempts of the first result: %v, want [503 200]", statuses)
	}

	// resend: the app and the archive get it again, under the same key
	key := withBody(app.all(), first)[0].Key
	var resent map[string]int
	opsJSON(t, http.MethodPost, events+"/"+url.PathEscape(a.ID)+"/resend", nil, http.StatusOK, &resent)
	if resent["resent"] != 2 {
		t.Errorf("resend: %v, want 2 deliveries", resent)
	}
	app.waitFor(t, "the first result delivered again to both", func(hits []*hit) bool {
		n := 0
		for _, h := range withBody(hits, first) {
			if delivered(h) && h.Key == key {
				n++
			}
		}
		return n == 4 // app (after its 503) and archive, twice each
	})

	// what cannot be is refused, saying why
	opsExpectError(t, http.MethodGet, events+"?state=done", nil, http.StatusBadRequest)
	opsExpectError(t, http.MethodGet, events+"?since=yesterday", nil, http.StatusBadRequest)
	opsExpectError(t, http.MethodGet, events+"/0000000000000000000000", nil, http.StatusNotFound)
	opsExpectError(t, http.MethodGet, "/webhook_relay/no-such-relay/events", nil, http.StatusNotFound)
	opsExpectError(t, http.MethodDelete, events, nil, http.StatusMethodNotAllowed)
}
