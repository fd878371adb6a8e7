package caddytest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The senders' URL handshakes, answered by the relay itself through a real
// Caddy: never stored, deduped or forwarded, counted as outcome challenge.

// expectAnswer checks a handshake's answer: 200, Content-Type ct,
// X-Content-Type-Options nosniff, and the body body.
func expectAnswer(t *testing.T, what string, a answer, ct, body string) {
	t.Helper()
	if a.status != http.StatusOK || a.body != body {
		t.Errorf("%s: answered %d %q, want 200 %q", what, a.status, a.body, body)
	}
	if got := a.header.Get("Content-Type"); got != ct {
		t.Errorf("%s: Content-Type %q, want %q", what, got, ct)
	}
	if got := a.header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q, want nosniff", what, got)
	}
}

// noneCarry fails the test if the upstream received a request whose body
// or URL holds any of marks.
func noneCarry(t *testing.T, up *upstream, marks ...string) {
	t.Helper()
	for _, h := range up.all() {
		for _, m := range marks {
			if strings.Contains(string(h.Body), m) || strings.Contains(h.RawQuery, m) {
				t.Errorf("the upstream received ?%s %.200s: a handshake was forwarded", h.RawQuery, h.Body)
			}
		}
	}
}

// TestHandshakeSlack: Slack's url_verification, signed, is answered with
// its challenge as JSON and goes no further; unsigned, tampered or
// misshapen it is refused; an event on the same relay is a payload.
func TestHandshakeSlack(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	name := relayName(t)
	secret := schemeSecrets["slack"][0]
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /slack {
		upstream %s/slack
		name %s
		store memory
		verify slack %s
	}`, up.URL, name, secret)))
	base := opsScrapeMetrics(t)
	in := relayURL("/slack", "")

	const challenge = `3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P</b>`
	handshake := func(c any) string {
		b, _ := json.Marshal(map[string]any{"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": c, "type": "url_verification"})
		return string(b)
	}
	now := time.Now().Unix()
	event := `{"token":"x","team_id":"T1","type":"event_callback","event_id":"Ev` + fmt.Sprint(time.Now().UnixNano()) +
		`","event":{"type":"app_mention","text":"hi"}}`
	reqs := []signRequest{
		{Scheme: "slack", Secret: secret, Body: handshake(challenge), Timestamp: now},
		{Scheme: "slack", Secret: secret, Body: handshake(challenge), Timestamp: now}, // to be tampered with
		{Scheme: "slack", Secret: secret, Body: handshake(42), Timestamp: now},
		{Scheme: "slack", Secret: secret, Body: event, Timestamp: now},
	}
	signed := signAll(t, reqs)

	a := post(t, in, []byte(reqs[0].Body), signed[0]...)
	expectAnswer(t, "signed url_verification", a, "application/json", `{"challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P\u003c/b\u003e"}`+"\n")
	var got map[string]string
	if err := json.Unmarshal([]byte(a.body), &got); err != nil || len(got) != 1 || got["challenge"] != challenge {
		t.Errorf("the answer %q decodes to %v (%v), want the challenge alone", a.body, got, err)
	}

	// the same handshake unsigned, and with another challenge than signed
	unsigned := post(t, in, []byte(reqs[0].Body))
	expectErrorBody(t, unsigned, http.StatusUnauthorized, "X-Slack-Signature")
	tampered := post(t, in, []byte(strings.Replace(reqs[1].Body, "3eZbrw", "evilxx", 1)), signed[1]...)
	expectErrorBody(t, tampered, http.StatusUnauthorized, "no signature")
	for _, a := range []answer{unsigned, tampered} {
		if strings.Contains(a.body, "3eZbrw") || strings.Contains(a.body, "evilxx") {
			t.Errorf("a refused handshake was answered with its challenge: %q", a.body)
		}
	}
	// signed, but its challenge is no string
	expectErrorBody(t, post(t, in, []byte(reqs[2].Body), signed[2]...), http.StatusBadRequest, "url_verification without a string challenge")

	// an event is a payload, and the only thing the upstream gets
	mustAccept(t, in, []byte(event), signed[3]...)
	up.waitDelivered(t, []byte(event))
	noneCarry(t, up, "url_verification")
	opsWaitMetrics(t, name, "one challenge, two refused, one bad, one accepted", opsMetricsWant{
		base:       base,
		requests:   map[string]float64{"challenge": 1, "unauthorized": 2, "bad_request": 1, "accepted": 1},
		deliveries: map[string]float64{"success": 1},
	})
	if s := opsOverview(t, name); s == nil || intOf(s.Keys) != 1 || s.Requests["challenge"] < 1 {
		t.Errorf("relay status %+v: want the event's key alone and challenge counted", s)
	}
}

// graphToken is a validation token as Graph sends it, encoded as Graph
// encodes it ('+' for spaces), and decoded.
const (
	graphTokenRaw = "Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+c69b04df-f3d3-411c-8ceb-7f1ad8b7a927"
	graphToken    = "Validation: Testing client application reachability for subscription Request-Id: c69b04df-f3d3-411c-8ceb-7f1ad8b7a927"
)

// TestHandshakeGraph: with challenge graph, a POST with validationToken is
// answered with the token, decoded, as text, before any body is read and
// after auth_query; a POST without it is a notification like any other.
func TestHandshakeGraph(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	name := relayName(t)
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /graph {
		upstream %s/graph
		name %s
		store memory
		key body
		auth_query token tok-s3cret
		challenge graph
	}`, up.URL, name)))
	base := opsScrapeMetrics(t)
	const text = "text/plain; charset=utf-8"

	expectAnswer(t, "validation", post(t, relayURL("/graph", "token=tok-s3cret&validationToken="+graphTokenRaw), nil), text, graphToken)
	// SharePoint's webhooks spell it validationtoken, and the token may
	// come before the auth parameter
	expectAnswer(t, "validationtoken", post(t, relayURL("/graph", "validationtoken=sp-"+graphTokenRaw+"&token=tok-s3cret"), nil), text, "sp-"+graphToken)

	// auth runs first: the token is not echoed to a stranger
	for _, q := range []string{"validationToken=" + graphTokenRaw, "token=wrong&validationToken=" + graphTokenRaw} {
		a := post(t, relayURL("/graph", q), nil)
		expectErrorBody(t, a, http.StatusUnauthorized, "auth query parameter")
		if strings.Contains(a.body, "Validation") {
			t.Errorf("?%s: the refusal %q carries the token", q, a.body)
		}
	}
	// tokens no sender sends
	expectErrorBody(t, post(t, relayURL("/graph", "token=tok-s3cret&validationToken=a&validationToken=b"), nil), http.StatusBadRequest, "given 2 times")
	expectErrorBody(t, post(t, relayURL("/graph", "token=tok-s3cret&validationToken="+strings.Repeat("x", 1025)), nil), http.StatusBadRequest, "1025 bytes")

	// a notification: stored and forwarded, the query without the token
	note := fmt.Sprintf(`{"value":[{"subscriptionId":"sub-%d","clientState":"state","changeType":"created","resource":"Users/1/Messages/2"}]}`, time.Now().UnixNano())
	mustAccept(t, relayURL("/graph", "token=tok-s3cret&tenant=t1"), []byte(note))
	hit := up.waitDelivered(t, []byte(note))[0]
	if hit.RawQuery != "tenant=t1" {
		t.Errorf("the notification reached the upstream with ?%s, want ?tenant=t1", hit.RawQuery)
	}

	// Graph has no GET handshake
	a, err := send(http.MethodGet, relayURL("/graph", "token=tok-s3cret&validationToken=x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	expectErrorBody(t, a, http.StatusMethodNotAllowed, "POST")
	if got := a.header.Get("Allow"); got != "POST" {
		t.Errorf("GET on a graph relay: Allow %q, want POST", got)
	}

	noneCarry(t, up, "Validation", "validationToken", "validationtoken")
	opsWaitMetrics(t, name, "two challenges, one notification", opsMetricsWant{
		base:       base,
		requests:   map[string]float64{"challenge": 2, "unauthorized": 2, "bad_request": 2, "accepted": 1, "method_not_allowed": 1},
		deliveries: map[string]float64{"success": 1},
	})
	if s := opsOverview(t, name); s == nil || intOf(s.Keys) != 1 {
		t.Errorf("relay status %+v: want the notification's key alone", s)
	}
}

// TestHandshakeDropbox: with challenge dropbox, GET ?challenge= is
// answered with the challenge as text, after auth_query; any other GET is
// a 400 that names the parameter, other methods a 405 that allows GET and
// POST; a relay with no GET handshake allows POST alone.
func TestHandshakeDropbox(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	name := relayName(t)
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /dropbox {
		upstream %s/dropbox
		name %s
		store memory
		key body
		auth_query token tok-s3cret
		challenge dropbox
	}
	webhook_relay /plain {
		upstream %s/plain
		name %s
		store memory
	}`, up.URL, name, up.URL, relayName(t, "plain"))))
	base := opsScrapeMetrics(t)
	get := func(url string) answer {
		t.Helper()
		a, err := send(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}

	expectAnswer(t, "verification", get(relayURL("/dropbox", "token=tok-s3cret&challenge=%3Cscript%3Ealert(1)%3C%2Fscript%3E")),
		"text/plain; charset=utf-8", "<script>alert(1)</script>")
	expectErrorBody(t, get(relayURL("/dropbox", "challenge=abc")), http.StatusUnauthorized, "auth query parameter")
	expectErrorBody(t, get(relayURL("/dropbox", "token=tok-s3cret")), http.StatusBadRequest, "query parameter challenge")
	expectErrorBody(t, get(relayURL("/dropbox", "token=tok-s3cret&challenge=")), http.StatusBadRequest, "empty")

	for _, method := range []string{http.MethodPut, http.MethodHead, http.MethodDelete} {
		a, err := send(method, relayURL("/dropbox", "token=tok-s3cret&challenge=abc"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if a.status != http.StatusMethodNotAllowed || a.header.Get("Allow") != "GET, POST" {
			t.Errorf("%s: %d Allow %q, want 405 Allow GET, POST", method, a.status, a.header.Get("Allow"))
		}
	}

	// Dropbox's notifications are POSTs: payloads
	note := fmt.Sprintf(`{"list_folder":{"accounts":["dbid:%d"]},"delta":{"users":[1]}}`, time.Now().UnixNano())
	mustAccept(t, relayURL("/dropbox", "token=tok-s3cret"), []byte(note))
	up.waitDelivered(t, []byte(note))

	// no GET handshake, no GET
	a := get(relayURL("/plain", "challenge=abc"))
	expectErrorBody(t, a, http.StatusMethodNotAllowed, "POST")
	if got := a.header.Get("Allow"); got != "POST" {
		t.Errorf("GET on a relay without a GET handshake: Allow %q, want POST", got)
	}

	noneCarry(t, up, "challenge", "script")
	opsWaitMetrics(t, name, "one challenge, one notification", opsMetricsWant{
		base:       base,
		requests:   map[string]float64{"challenge": 1, "unauthorized": 1, "bad_request": 2, "method_not_allowed": 3, "accepted": 1},
		deliveries: map[string]float64{"success": 1},
	})
}
