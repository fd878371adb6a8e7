package caddytest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// pausedRelays is a site with two relays on the memory store, /paused and
// /open, each with its own upstream.
func pausedRelays(t *testing.T, pausedUp, openUp string) (paused, open string) {
	paused, open = relayName(t, "paused"), relayName(t, "open")
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /paused {
		upstream %s/hook
		name %s
		store memory
	}
	webhook_relay /open {
		upstream %s/hook
		name %s
		store memory
	}`, pausedUp, paused, openUp, open)))
	return paused, open
}

// wantDestinations checks a relay's destinations in the overview.
func wantDestinations(t *testing.T, s *opsRelayStatus, paused bool) {
	t.Helper()
	want := []opsDestination{{Name: "upstream", Paused: paused}}
	if fmt.Sprint(s.Destinations) != fmt.Sprint(want) {
		t.Errorf("relay %s: destinations %+v, want %+v", s.Name, s.Destinations, want)
	}
}

// TestPauseResumeThroughAdmin: a paused destination keeps accepting (200)
// and delivers nothing, while another relay of the same Caddy delivers;
// the resume delivers what waited. The overview and the metrics show the
// pause.
func TestPauseResumeThroughAdmin(t *testing.T) {
	pausedUp, openUp := newUpstream(t, always(http.StatusOK)), newUpstream(t, always(http.StatusOK))
	paused, open := pausedRelays(t, pausedUp.URL, openUp.URL)

	var res struct {
		Relay        string           `json:"relay"`
		Destinations []opsDestination `json:"destinations"`
	}
	opsJSON(t, http.MethodPost, "/webhook_relay/"+paused+"/destinations/upstream/pause", nil, http.StatusOK, &res)
	if res.Relay != paused || fmt.Sprint(res.Destinations) != fmt.Sprint([]opsDestination{{"upstream", true}}) {
		t.Errorf("pause answered %+v", res)
	}
	bodies := [][]byte{payload(t), payload(t), payload(t)}
	for _, b := range bodies {
		expectStatus(t, post(t, relayURL("/paused", ""), b), http.StatusOK, "accepted")
	}
	// the other relay delivers meanwhile: the paused one had its chances
	// (each admit woke its engine, which read the pause)
	other := payload(t)
	mustAccept(t, relayURL("/open", ""), other)
	openUp.waitDelivered(t, other)
	s := opsWaitOverview(t, paused, "a backlog of 3", func(s *opsRelayStatus) bool { return intOf(s.Backlog) == 3 })
	if n := len(pausedUp.all()); n != 0 {
		t.Fatalf("the paused destination's upstream got %d requests:\n%s", n, describe(pausedUp.all()))
	}
	wantDestinations(t, s, true)
	wantDestinations(t, opsOverview(t, open), false)
	m := opsScrapeMetrics(t)
	if v := m.value(t, "caddy_webhook_relay_paused", "relay="+paused, "destination=upstream"); v != 1 {
		t.Errorf("caddy_webhook_relay_paused{relay=%q} = %v, want 1", paused, v)
	}
	if v := m.value(t, "caddy_webhook_relay_paused", "relay="+open, "destination=upstream"); v != 0 {
		t.Errorf("caddy_webhook_relay_paused{relay=%q} = %v, want 0", open, v)
	}

	// an unknown destination is a 404 naming the relay's
	r := opsCall(t, http.MethodPost, "/webhook_relay/"+paused+"/destinations/archive/pause", nil)
	if r.status != http.StatusNotFound || !strings.Contains(string(r.body), `has no destination \"archive\"; its destinations: upstream`) {
		t.Errorf("pausing an unknown destination: %d %s", r.status, r.body)
	}
	opsExpectError(t, http.MethodGet, "/webhook_relay/"+paused+"/pause", nil, http.StatusMethodNotAllowed)

	// the resume of all the relay's destinations delivers what waited
	opsJSON(t, http.MethodPost, "/webhook_relay/"+paused+"/resume", nil, http.StatusOK, &res)
	for _, b := range bodies {
		pausedUp.waitDelivered(t, b)
	}
	s = opsWaitOverview(t, paused, "an empty backlog", func(s *opsRelayStatus) bool { return intOf(s.Backlog) == 0 })
	wantDestinations(t, s, false)
	if v := opsScrapeMetrics(t).value(t, "caddy_webhook_relay_paused", "relay="+paused, "destination=upstream"); v != 0 {
		t.Errorf("after the resume caddy_webhook_relay_paused = %v, want 0", v)
	}
}

// TestPauseCommand: caddy webhook-relay pause and resume, with status
// showing the pause, and an unknown destination's error.
func TestPauseCommand(t *testing.T) {
	c := commandRunner{t: t, bin: buildCaddy(t)}
	pausedUp, openUp := newUpstream(t, always(http.StatusOK)), newUpstream(t, always(http.StatusOK))
	paused, open := pausedRelays(t, pausedUp.URL, openUp.URL)

	expect(t, c.admin("pause", paused), 0, paused+" upstream: paused")
	r := c.admin("status")
	expect(t, r, 0, "PAUSED")
	rows := table(t, r.stdout)
	if row := rowOf(rows, "RELAY", paused); row == nil || row["PAUSED"] != "upstream" {
		t.Errorf("status row of %s: %v, want PAUSED upstream\n%s", paused, row, r)
	}
	if row := rowOf(rows, "RELAY", open); row == nil || row["PAUSED"] != "-" {
		t.Errorf("status row of %s: %v, want PAUSED -\n%s", open, row, r)
	}
	body := payload(t)
	mustAccept(t, relayURL("/paused", ""), body)

	expect(t, c.admin("pause", paused, "archive"), 1, `relay "`+paused+`" has no destination "archive"; its destinations: upstream`)
	expect(t, c.admin("pause"), 2, "want caddy webhook-relay pause <relay> [<destination>]")
	expect(t, c.admin("resume", "no-such-relay"), 1, `no relay named "no-such-relay"`)

	expect(t, c.admin("resume", paused, "upstream"), 0, paused+" upstream: delivering")
	pausedUp.waitDelivered(t, body)
	if row := rowOf(table(t, c.admin("status").stdout), "RELAY", paused); row == nil || row["PAUSED"] != "-" {
		t.Errorf("status row of %s after the resume: %v, want PAUSED -", paused, row)
	}
}
