package processtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/ops"
)

// The history is the store's: payloads accepted and delivered by one Caddy
// process on a Redis are found, with every attempt, through another
// process's admin API, which can resend them.
func TestRedisHistorySharedAcrossInstances(t *testing.T) {
	const n = 5
	srv := redistest.Start(t, redistest.Options{AOF: true})
	up := &Upstream{}
	up.Upstream = testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		if r.Nth == 1 {
			return testkit.Answer{Status: http.StatusServiceUnavailable} // each payload's first attempt
		}
		return testkit.Answer{Status: http.StatusOK}
	})
	a, b := NewInstance(t), NewInstance(t)
	a.Start(redisSite(up, srv))
	b.Start(redisSite(up, srv))
	sendAll(t, a, n)
	waitDelivered(t, up, n, 15*time.Second)

	events := func(query string) ops.EventPage {
		t.Helper()
		var page ops.EventPage
		getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/webhook_relay/%s/events?%s", b.AdminPort, redisRelayName, query), &page)
		return page
	}
	var page ops.EventPage
	testkit.Eventually(t, 10*time.Second, func() bool {
		page = events("key=payload-0003&state=delivered")
		return len(page.Entries) == 1
	}, "payload-0003 delivered in B's history; found %s", testkit.Lazy(func() string { return fmt.Sprint(page.Entries) }))
	e := page.Entries[0]
	var statuses []int
	for _, at := range e.Attempts {
		statuses = append(statuses, at.Status)
	}
	if fmt.Sprint(statuses) != "[503 200]" || len(e.Destinations) != 1 || e.Destinations[0].Attempts != 2 {
		t.Fatalf("B shows payload-0003 with attempts %v, destinations %+v; want [503 200] to upstream", statuses, e.Destinations)
	}
	if all := events("limit=100"); len(all.Entries) != n {
		t.Errorf("B lists %d records, want the %d that A accepted", len(all.Entries), n)
	}

	resp, err := httpClient.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook_relay/%s/events/%s/resend", b.AdminPort, redisRelayName, e.ID), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("resend through B: %d", resp.StatusCode)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return up.Delivered()[e.Key] == 2 },
		"payload-0003 delivered again under its key %s", e.Key)
}

// getJSON GETs url and decodes its JSON answer, which must be a 200.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := httpClient.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
