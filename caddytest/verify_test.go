package caddytest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// signersDir holds the providers' own libraries (package.json, installed by
// ./scripts/test with npm ci) and sign.mjs, which signs with them.
var signersDir = filepath.Join("testdata", "signers")

// signRequest is one request for sign.mjs to sign.
type signRequest struct {
	Scheme    string `json:"scheme"`
	Secret    string `json:"secret"`
	Body      string `json:"body"`
	ID        string `json:"id"`
	Timestamp int64  `json:"timestamp"`
}

// runSigners runs sign.mjs with args on input (a JSON list) and decodes its
// JSON list into out.
func runSigners(t *testing.T, input any, out any, args ...string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: the signature tests sign with the providers' own npm packages; " +
			"install Node.js 20 or later and run ./scripts/test (it runs npm ci in caddytest/testdata/signers)")
	}
	if _, err := os.Stat(filepath.Join(signersDir, "node_modules")); err != nil {
		t.Fatal("caddytest/testdata/signers/node_modules is missing: run `npm ci` there (./scripts/test does)")
	}
	in, err := json.Marshal(input)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, append([]string{"sign.mjs"}, args...)...)
	cmd.Dir = signersDir
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("sign.mjs: %v\n%s", err, stderr.String())
	}
	if err := json.Unmarshal(stdout, out); err != nil {
		t.Fatalf("sign.mjs printed %q: %v", stdout, err)
	}
}

// signAll signs reqs (signRequests, or a scheme's own kind of them) with
// the providers' libraries and returns each one's
// headers as "Name: value" pairs for send.
func signAll[R any](t *testing.T, reqs []R) [][]string {
	t.Helper()
	var out []map[string]string
	runSigners(t, reqs, &out)
	if len(out) != len(reqs) {
		t.Fatalf("sign.mjs signed %d of %d requests", len(out), len(reqs))
	}
	headers := make([][]string, len(out))
	for i, h := range out {
		for name, value := range h {
			headers[i] = append(headers[i], name+": "+value)
		}
	}
	return headers
}

// schemeSecrets are each scheme's current secret and the one it replaces
// (rotation), in the scheme's own format (and without spaces: they are
// Caddyfile arguments here).
var schemeSecrets = map[string][2]string{
	"standard_webhooks": {"whsec_" + base64.StdEncoding.EncodeToString([]byte("standard current key")), "whsec_" + base64.StdEncoding.EncodeToString([]byte("standard older key"))},
	"svix":              {"whsec_" + base64.StdEncoding.EncodeToString([]byte("svix current key")), "whsec_" + base64.StdEncoding.EncodeToString([]byte("svix older key"))},
	"stripe":            {"whsec_stripe_current", "whsec_stripe_older"},
	"github":            {"github-current", "github-older"},
	"shopify":           {"shpss_current", "shpss_older"},
	"slack":             {"slack-current", "slack-older"},
	"paddle":            {"pdl_ntfset_current", "pdl_ntfset_older"},
	"linear":            {"lin_wh_current", "lin_wh_older"},
}

// signatureHeader is the header each scheme's check needs first.
var signatureHeader = map[string]string{
	"standard_webhooks": "webhook-signature", "svix": "svix-signature", "stripe": "Stripe-Signature",
	"github": "X-Hub-Signature-256", "shopify": "X-Shopify-Hmac-Sha256", "slack": "X-Slack-Signature",
	"paddle": "Paddle-Signature", "linear": "Linear-Signature",
}

// unsignedID is the delivery id header of the schemes whose signature does
// not cover it.
var unsignedID = map[string]string{"github": "X-GitHub-Delivery", "shopify": "X-Shopify-Webhook-Id", "linear": "Linear-Delivery"}

var timestamped = map[string]bool{"standard_webhooks": true, "svix": true, "stripe": true, "slack": true, "paddle": true, "linear": true}

// TestVerifySchemes: each scheme's requests, signed by the provider's own
// library (or, for providers that ship none, by node's crypto as their
// documentation describes), pass or fail as the provider means them to:
// valid, rotated secret, tampered body, wrong secret, missing header,
// stale timestamp, duplicate delivery.
func TestVerifySchemes(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	var relays strings.Builder
	for scheme, secrets := range schemeSecrets {
		fmt.Fprintf(&relays, `
	webhook_relay /v/%s {
		upstream %s/%s
		name %s
		store memory
		verify %s %s %s
	}`, scheme, up.URL, scheme, relayName(t, scheme), scheme, secrets[0], secrets[1])
	}
	startCaddy(t, globalOptions+fmt.Sprintf(`
:%d {%s
	handle_errors {
		respond "{err.status_code} [{http.webhook_relay.outcome}] {err.message}"
	}
}`, relayPort, relays.String()))

	type check struct {
		name   string
		req    signRequest
		edit   func(body string, headers []string) (string, []string) // after signing
		status int
		want   string // "accepted", "duplicate", or a phrase of the 401's message
	}
	n := 0
	newReq := func(scheme, secret string, ts int64) signRequest {
		n++
		id := fmt.Sprintf("evt_%s_%d", scheme, n)
		body := fmt.Sprintf(`{"id":%q,"event_id":%q,"webhookTimestamp":%d,"type":"test.event","action":"create",`+
			`"createdAt":"2026-12-06T18:00:00.%03dZ","data":{"id":"ent-%d","n":%d}}`, id, id, ts*1000, n%1000, n, n)
		return signRequest{Scheme: scheme, Secret: secret, Body: body, ID: id, Timestamp: ts}
	}
	for scheme, secrets := range schemeSecrets {
		t.Run(scheme, func(t *testing.T) {
			now := time.Now().Unix() // Paddle allows five seconds
			valid := newReq(scheme, secrets[0], now)
			checks := []check{
				{"valid", valid, nil, 200, "accepted"},
				{"duplicate delivery", valid, nil, 200, "duplicate"},
				{"rotated secret", newReq(scheme, secrets[1], now), nil, 200, "accepted"},
				{"tampered body", newReq(scheme, secrets[0], now), func(b string, h []string) (string, []string) {
					return strings.Replace(b, `"type":"test.event"`, `"type":"test.evil"`, 1), h
				}, 401, "no signature"},
				{"wrong secret", newReq(scheme, "whsec_"+base64.StdEncoding.EncodeToString([]byte("not the secret")), now), nil, 401, "no signature"},
				{"missing header", newReq(scheme, secrets[0], now), func(b string, h []string) (string, []string) {
					var kept []string
					for _, f := range h {
						if !strings.EqualFold(strings.SplitN(f, ":", 2)[0], signatureHeader[scheme]) {
							kept = append(kept, f)
						}
					}
					return b, kept
				}, 401, "missing"},
			}
			if h := unsignedID[scheme]; h != "" {
				// a captured request replayed with a new id of its own: the
				// default key is signed content, so it is still a duplicate
				checks = append(checks, check{"replayed with a new " + h, valid, func(b string, hs []string) (string, []string) {
					var out []string
					for _, f := range hs {
						if strings.EqualFold(strings.SplitN(f, ":", 2)[0], h) {
							f = h + ": replayed-" + fmt.Sprint(time.Now().UnixNano())
						}
						out = append(out, f)
					}
					return b, out
				}, 200, "duplicate"})
			}
			if scheme == "linear" {
				// Linear's retry of one event: signed again with a new
				// webhookTimestamp, a new Linear-Delivery
				retry := valid
				retry.Body = strings.Replace(valid.Body, fmt.Sprintf(`"webhookTimestamp":%d`, now*1000), fmt.Sprintf(`"webhookTimestamp":%d`, now*1000+1500), 1)
				retry.ID = valid.ID + "-retry"
				checks = append(checks, check{"Linear's retry", retry, nil, 200, "duplicate"})
			}
			if timestamped[scheme] {
				checks = append(checks, check{"stale timestamp", newReq(scheme, secrets[0], now-3600), nil, 401, "outside the tolerance"})
			}
			reqs := make([]signRequest, len(checks))
			for i, c := range checks {
				reqs[i] = c.req
			}
			signed := signAll(t, reqs)
			in := relayURL("/v/"+scheme, "")
			for i, c := range checks {
				body, headers := c.req.Body, signed[i]
				if c.edit != nil {
					body, headers = c.edit(body, headers)
				}
				a := post(t, in, []byte(body), headers...)
				switch {
				case a.status != c.status:
					t.Errorf("%s: status %d, want %d (%q)", c.name, a.status, c.status, a.body)
				case c.status == 200 && !strings.Contains(a.body, `"`+c.want+`"`):
					t.Errorf("%s: answered %q, want %s", c.name, a.body, c.want)
				case c.status == 401 && !(strings.HasPrefix(a.body, "401 [unauthorized] verify "+scheme) && strings.Contains(a.body, c.want)):
					t.Errorf("%s: 401 says %q, want the scheme and %q", c.name, a.body, c.want)
				}
				if strings.Contains(a.body, secrets[0]) || strings.Contains(a.body, secrets[1]) {
					t.Errorf("%s: the answer %q shows a secret", c.name, a.body)
				}
			}
			// the valid and the rotated payloads, each once
			for _, body := range []string{checks[0].req.Body, checks[2].req.Body} {
				up.waitDelivered(t, []byte(body))
			}
		})
	}
}

// TestVerifyAndAuthQueryBothApply: with both set, a valid signature does
// not make up for a wrong token, nor the other way round.
func TestVerifyAndAuthQueryBothApply(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	secret := schemeSecrets["github"][0]
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		auth_query token tok-1
		verify github %s
	}`, up.URL, relayName(t), secret)))
	now := time.Now().Unix()
	reqs := []signRequest{
		{Scheme: "github", Secret: secret, Body: `{"a":1}`, ID: "d-1", Timestamp: now},
		{Scheme: "github", Secret: "wrong", Body: `{"a":2}`, ID: "d-2", Timestamp: now},
		{Scheme: "github", Secret: secret, Body: `{"a":3}`, ID: "d-3", Timestamp: now},
	}
	signed := signAll(t, reqs)
	expectStatus(t, post(t, relayURL("/in", "token=tok-1"), []byte(reqs[0].Body), signed[0]...), 200, "accepted")
	expectStatus(t, post(t, relayURL("/in", "token=tok-1"), []byte(reqs[1].Body), signed[1]...), 401, "")
	expectStatus(t, post(t, relayURL("/in", "token=nope"), []byte(reqs[2].Body), signed[2]...), 401, "")
	up.waitDelivered(t, []byte(reqs[0].Body))
}

// TestVerifyForwardsTheSchemesHeaders: what a sender signed reaches the app
// as sent (so an app that verifies GitHub's signature itself keeps
// working), with the headers forward_headers adds.
func TestVerifyForwardsTheSchemesHeaders(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	secret := schemeSecrets["github"][0]
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		verify github %s
		forward_headers X-Request-Source
	}`, up.URL, relayName(t), secret)))
	req := signRequest{Scheme: "github", Secret: secret, Body: `{"ref":"refs/heads/main"}`, ID: "delivery-fwd-1", Timestamp: time.Now().Unix()}
	signed := signAll(t, []signRequest{req})[0]
	mustAccept(t, relayURL("/in", ""), []byte(req.Body), append(signed, "X-Request-Source: ci", "X-Not-Kept: nope")...)
	hit := up.waitDelivered(t, []byte(req.Body))[0]
	for _, f := range append(signed, "X-Request-Source: ci") {
		name, value, _ := strings.Cut(f, ": ")
		if got := hit.Header.Get(name); got != value {
			t.Errorf("upstream got %s %q, want %q as the sender sent it", name, got, value)
		}
	}
	if got := hit.Header.Get("X-Not-Kept"); got != "" {
		t.Errorf("X-Not-Kept reached the upstream (%q): only the scheme's headers and forward_headers are kept", got)
	}
}

// TestSignUpstreamVerifiedByLibrary: with sign_upstream, the app verifies
// every attempt with the standardwebhooks library, retries included, and
// webhook-id is the Idempotency-Key.
func TestSignUpstreamVerifiedByLibrary(t *testing.T) {
	const secret = "whsec_c2lnbiB1cHN0cmVhbSBpbiBjYWRkeXRlc3Q="
	up := newUpstream(t, sequence(http.StatusServiceUnavailable, http.StatusOK))
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		backoff 10ms 50ms
		sign_upstream %s
	}`, up.URL, relayName(t), secret)))
	body := payload(t)
	mustAccept(t, relayURL("/in", ""), body)
	hits := up.waitDelivered(t, body)
	if len(hits) != 2 {
		t.Fatalf("%d attempts, want 2 (503, 200):\n%s", len(hits), describe(hits))
	}
	type check struct {
		Secret  string            `json:"secret"`
		Body    string            `json:"body"`
		Headers map[string]string `json:"headers"`
	}
	var checks []check
	for _, h := range hits {
		if id := h.Header.Get("webhook-id"); id != h.Key {
			t.Errorf("attempt %d: webhook-id %q, want the Idempotency-Key %q", h.Attempt, id, h.Key)
		}
		headers := map[string]string{}
		for _, name := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
			headers[name] = h.Header.Get(name)
		}
		checks = append(checks, check{secret, string(h.Body), headers})
	}
	// and one the library must refuse, so a pass means something
	tampered := checks[0]
	tampered.Body += " "
	checks = append(checks, tampered)
	var results []struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	runSigners(t, checks, &results, "verify-standard")
	for i, r := range results[:len(hits)] {
		if !r.OK {
			t.Errorf("attempt %d: standardwebhooks refused the relay's signature: %s", i+1, r.Error)
		}
	}
	if results[len(hits)].OK {
		t.Error("standardwebhooks accepted a tampered body: the check proves nothing")
	}
}

// TestVerifyWarnsWhenWindowIsShorterThanTolerance: a window shorter than
// the scheme's tolerance forgets a key while a replay of its request is
// still accepted; the relay says so once, at load, and not for a window
// that covers the tolerance.
func TestVerifyWarnsWhenWindowIsShorterThanTolerance(t *testing.T) {
	file := filepath.Join(t.TempDir(), "caddy.log")
	opsLoadBack(t)
	short, long := relayName(t, "short"), relayName(t, "long")
	startCaddy(t, opsLogGlobals(file, "WARN")+fmt.Sprintf(`
:%d {
	webhook_relay /short http://127.0.0.1:9/hook {
		name %s
		store memory
		window 1m
		verify stripe whsec_test
	}
	webhook_relay /long http://127.0.0.1:9/hook {
		name %s
		store memory
		window 5m
		verify stripe whsec_test
	}
}`, relayPort, short, long))
	const msg = "window is shorter than the verify scheme's tolerance"
	lines := opsWaitLog(t, file, "the warning", func(l []opsLogLine) bool { return opsHasMsg(l, "http.handlers.webhook_relay", msg) })
	var warned []string
	for _, l := range lines {
		if l.fromModule() && strings.Contains(l.msg(), msg) {
			if l.level() != "warn" || l.str("scheme") != "stripe" || l.str("tolerance") == "" {
				t.Errorf("warning line %s: want level warn with the scheme and the tolerance", l)
			}
			warned = append(warned, l.str("relay"))
		}
	}
	if len(warned) != 1 || warned[0] != short {
		t.Errorf("warned for %q, want once for %s", warned, short)
	}
}
