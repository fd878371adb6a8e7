package caddytest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// The schemes that sign with a key pair: sign.mjs makes the key pairs and
// signs with node's crypto; it checks Discord's signatures with
// discord-interactions' verifyKey and SendGrid's with
// @sendgrid/eventwebhook before it hands them over.

// keyPair is a private key for sign.mjs (PKCS#8 DER, base64) and its
// public key as the provider shows it.
type keyPair struct {
	Private string `json:"private"`
	Public  string `json:"public"`
}

// keyPairs has sign.mjs make n key pairs for scheme.
func keyPairs(t *testing.T, scheme string, n int) []keyPair {
	t.Helper()
	in := make([]map[string]string, n)
	for i := range in {
		in[i] = map[string]string{"scheme": scheme}
	}
	var out []keyPair
	runSigners(t, in, &out, "keypair")
	if len(out) != n {
		t.Fatalf("sign.mjs made %d of %d key pairs", len(out), n)
	}
	return out
}

// asymRequest is one request for sign.mjs to sign with a private key.
type asymRequest struct {
	Scheme    string `json:"scheme"`
	Secret    string `json:"secret"` // the private key
	Body      string `json:"body"`
	ID        string `json:"id"`
	Timestamp int64  `json:"timestamp"`
	User      string `json:"user,omitempty"` // fal's X-Fal-Webhook-User-Id
}

// dropHeader removes name from headers; setHeader replaces its value.
func dropHeader(headers []string, name string) []string {
	var kept []string
	for _, f := range headers {
		if !strings.EqualFold(strings.SplitN(f, ":", 2)[0], name) {
			kept = append(kept, f)
		}
	}
	return kept
}

func setHeader(headers []string, name, value string) []string {
	return append(dropHeader(headers, name), name+": "+value)
}

// asymCheck is one request of a scheme's test and its expected answer.
type asymCheck struct {
	name   string
	req    asymRequest
	edit   func(body string, headers []string) (string, []string) // after signing
	status int
	want   string // "accepted", "duplicate", or a phrase of the refusal
}

// runAsymChecks signs the checks' requests, sends each to path, and
// compares the answers; the answers must show no key.
func runAsymChecks(t *testing.T, scheme, path string, checks []asymCheck, keys ...string) {
	t.Helper()
	reqs := make([]asymRequest, len(checks))
	for i, c := range checks {
		reqs[i] = c.req
	}
	signed := signAll(t, reqs)
	for i, c := range checks {
		body, headers := c.req.Body, signed[i]
		if c.edit != nil {
			body, headers = c.edit(body, headers)
		}
		a := post(t, relayURL(path, ""), []byte(body), headers...)
		prefix := map[int]string{401: "401 [unauthorized] verify " + scheme, 503: "503 [unavailable] verify " + scheme}[c.status]
		switch {
		case a.status != c.status:
			t.Errorf("%s: status %d, want %d (%q)", c.name, a.status, c.status, a.body)
		case c.status == 200 && !strings.Contains(a.body, `"`+c.want+`"`):
			t.Errorf("%s: answered %q, want %s", c.name, a.body, c.want)
		case prefix != "" && !(strings.HasPrefix(a.body, prefix) && strings.Contains(a.body, c.want)):
			t.Errorf("%s: %d says %q, want %q and %q", c.name, c.status, a.body, prefix, c.want)
		}
		for _, k := range keys {
			if strings.Contains(a.body, k) {
				t.Errorf("%s: the answer %q shows a key", c.name, a.body)
			}
		}
	}
}

const asymErrors = `
	handle_errors {
		respond "{err.status_code} [{http.webhook_relay.outcome}] {err.message}"
	}`

// asymSignature is the signature header of each scheme, asymTimestamp its
// timestamp header.
var (
	asymSignature = map[string]string{"discord": "X-Signature-Ed25519", "sendgrid": "X-Twilio-Email-Event-Webhook-Signature", "fal": "X-Fal-Webhook-Signature"}
	asymTimestamp = map[string]string{"discord": "X-Signature-Timestamp", "sendgrid": "X-Twilio-Email-Event-Webhook-Timestamp", "fal": "X-Fal-Webhook-Timestamp"}
)

// TestVerifyDiscordSendGrid: Discord's and SendGrid's requests, signed with
// node's crypto and checked by each provider's own library, pass or fail
// as the provider means them to: valid, rotated key (two configured,
// signed with the second), tampered body, wrong key, missing and malformed
// header, stale timestamp.
func TestVerifyDiscordSendGrid(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	keys := map[string][]keyPair{"discord": keyPairs(t, "discord", 3), "sendgrid": keyPairs(t, "sendgrid", 3)}
	var relays strings.Builder
	for _, scheme := range []string{"discord", "sendgrid"} {
		// the first two configured, the third not
		fmt.Fprintf(&relays, `
	webhook_relay /v/%s {
		upstream %s/%s
		name %s
		store memory
		verify %s %s %s
	}`, scheme, up.URL, scheme, relayName(t, scheme), scheme, keys[scheme][0].Public, keys[scheme][1].Public)
	}
	startCaddy(t, globalOptions+fmt.Sprintf(`
:%d {%s%s
}`, relayPort, relays.String(), asymErrors))

	n := 0
	newReq := func(scheme string, key keyPair, ts int64) asymRequest {
		n++
		body := fmt.Sprintf(`{"version":1,"application_id":"1234","type":1,"event":{"type":"ENTITLEMENT_CREATE","n":%d}}`, n)
		if scheme == "sendgrid" {
			body = fmt.Sprintf(`[{"email":"a@example.com","event":"delivered","sg_event_id":"ev-%d","timestamp":%d}]`, n, ts)
		}
		return asymRequest{Scheme: scheme, Secret: key.Private, Body: body, Timestamp: ts}
	}
	for _, scheme := range []string{"discord", "sendgrid"} {
		t.Run(scheme, func(t *testing.T) {
			k := keys[scheme]
			sigH, tsH := asymSignature[scheme], asymTimestamp[scheme]
			now := time.Now().Unix()
			valid, rotated := newReq(scheme, k[0], now), newReq(scheme, k[1], now)
			runAsymChecks(t, scheme, "/v/"+scheme, []asymCheck{
				{"valid", valid, nil, 200, "accepted"},
				{"duplicate delivery", valid, nil, 200, "duplicate"},
				{"rotated key", rotated, nil, 200, "accepted"},
				{"tampered body", newReq(scheme, k[0], now), func(b string, h []string) (string, []string) {
					tampered := strings.NewReplacer("ENTITLEMENT_CREATE", "ENTITLEMENT_DELETE", `"delivered"`, `"bounce"`).Replace(b)
					if tampered == b {
						t.Fatal("the tampering changed nothing")
					}
					return tampered, h
				}, 401, "no signature in " + sigH + " matches"},
				{"wrong key", newReq(scheme, k[2], now), nil, 401, "no signature in " + sigH + " matches"},
				{"missing signature", newReq(scheme, k[0], now), func(b string, h []string) (string, []string) {
					return b, dropHeader(h, sigH)
				}, 401, sigH + " is missing"},
				{"missing timestamp", newReq(scheme, k[0], now), func(b string, h []string) (string, []string) {
					return b, dropHeader(h, tsH)
				}, 401, tsH + " is missing"},
				{"malformed signature", newReq(scheme, k[0], now), func(b string, h []string) (string, []string) {
					return b, setHeader(h, sigH, "not-a-signature")
				}, 401, sigH + " is malformed"},
				{"malformed timestamp", newReq(scheme, k[0], now), func(b string, h []string) (string, []string) {
					return b, setHeader(h, tsH, "soon")
				}, 401, tsH + " is malformed"},
				{"stale timestamp", newReq(scheme, k[0], now-3600), nil, 401, "outside the tolerance"},
			}, k[0].Private, k[1].Private, k[2].Private)
			for _, body := range []string{valid.Body, rotated.Body} {
				up.waitDelivered(t, []byte(body))
			}
			// nothing else reached the upstream
			for _, h := range withPath(up.all(), "/"+scheme) {
				if b := string(h.Body); b != valid.Body && b != rotated.Body {
					t.Errorf("the upstream received %q", b)
				}
			}
		})
	}
}

// TestHandshakeDiscord: Discord's PING of a webhook events URL, signed
// {"type":0}, is answered 204 with no body by the relay itself, and
// neither stored nor forwarded; a PING that is not signed with the
// application's key is refused, and a type 1 event is a payload.
func TestHandshakeDiscord(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	k := keyPairs(t, "discord", 2)
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		verify discord %s
	}`, up.URL, relayName(t), k[0].Public)))
	now := time.Now().Unix()
	ping := `{"version":1,"application_id":"1234560123453231555","type":0}`
	event := `{"version":1,"application_id":"1234560123453231555","type":1,"event":{"type":"APPLICATION_AUTHORIZED","timestamp":"2026-12-06T18:00:00Z"}}`
	reqs := []asymRequest{
		{Scheme: "discord", Secret: k[0].Private, Body: ping, Timestamp: now},
		{Scheme: "discord", Secret: k[1].Private, Body: ping, Timestamp: now},
		{Scheme: "discord", Secret: k[0].Private, Body: event, Timestamp: now},
	}
	signed := signAll(t, reqs)
	a := post(t, relayURL("/in", ""), []byte(ping), signed[0]...)
	if a.status != http.StatusNoContent || a.body != "" {
		t.Errorf("signed PING: %d %q, want 204 with no body", a.status, a.body)
	}
	if a := post(t, relayURL("/in", ""), []byte(ping), signed[1]...); a.status != http.StatusUnauthorized {
		t.Errorf("PING signed with another key: %d %q, want 401", a.status, a.body)
	}
	expectStatus(t, post(t, relayURL("/in", ""), []byte(event), signed[2]...), 200, "accepted")
	up.waitDelivered(t, []byte(event))
	for _, h := range up.all() {
		if strings.Contains(string(h.Body), `"type":0`) {
			t.Errorf("the PING reached the upstream: %q", h.Body)
		}
	}
}

// jwksServer serves a JSON Web Key Set of Ed25519 keys on 127.0.0.1:0,
// counting the fetches; the keys it serves can change.
type jwksServer struct {
	URL  string
	hits atomic.Int64
	mu   sync.Mutex
	xs   []string // the keys' x, base64url
}

func newJWKSServer(t *testing.T, xs ...string) *jwksServer {
	t.Helper()
	s := &jwksServer{xs: xs}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		type jwk struct {
			Kty string `json:"kty"`
			Crv string `json:"crv"`
			X   string `json:"x"`
			Kid string `json:"kid"`
		}
		var set struct {
			Keys []jwk `json:"keys"`
		}
		for i, x := range s.xs {
			set.Keys = append(set.Keys, jwk{"OKP", "Ed25519", x, fmt.Sprint("key-", i)})
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(set)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.URL = "http://" + ln.Addr().String() + "/.well-known/jwks.json"
	return s
}

func (s *jwksServer) serve(xs ...string) {
	s.mu.Lock()
	s.xs = xs
	s.mu.Unlock()
}

// closedURL is an address nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr + "/.well-known/jwks.json"
}

// TestVerifyFal: fal's requests, signed with node's crypto as fal
// documents it, checked with the keys a real JWKS server serves: valid,
// two keys served (signed with the second), a rotation (the server serves
// a new key, and the first request signed with it passes), forged
// signatures (at most one refetch within the rate limit, counted at the
// server), tampered body, missing and malformed headers, stale timestamp,
// and a key set that cannot be fetched with nothing cached: 503 with
// Retry-After, and nothing reaches the upstream.
func TestVerifyFal(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	k := keyPairs(t, "fal", 4) // 0, 1 served; 2 the rotated key; 3 a forger's
	rotating := newJWKSServer(t, k[0].Public)
	steady := newJWKSServer(t, k[0].Public, k[1].Public)
	down := closedURL(t)
	startCaddy(t, globalOptions+fmt.Sprintf(`
:%d {
	webhook_relay /rotating {
		upstream %s/rotating
		name %s
		store memory
		verify fal {
			jwks %s
		}
	}
	webhook_relay /steady {
		upstream %s/steady
		name %s
		store memory
		verify fal {
			jwks %s
		}
	}
	webhook_relay /down {
		upstream %s/down
		name %s
		store memory
		verify fal {
			jwks %s
		}
	}%s
}`, relayPort, up.URL, relayName(t, "rotating"), rotating.URL, up.URL, relayName(t, "steady"), steady.URL,
		up.URL, relayName(t, "down"), down, asymErrors))
	if n := rotating.hits.Load() + steady.hits.Load(); n != 0 {
		t.Fatalf("loading the config fetched the keys %d times: they are fetched on the first request", n)
	}

	n := 0
	newReq := func(key keyPair, ts int64) asymRequest {
		n++
		id := fmt.Sprintf("req-%d-%d", n, time.Now().UnixNano())
		body := fmt.Sprintf(`{"request_id":%q,"gateway_request_id":%q,"status":"OK","payload":{"seed":%d}}`, id, id, n)
		return asymRequest{Scheme: "fal", Secret: key.Private, Body: body, ID: id, Timestamp: ts, User: "user-42"}
	}
	now := time.Now().Unix()
	const sigH = "X-Fal-Webhook-Signature"

	// a rotation right after the first fetch is seen at once
	valid, rotated := newReq(k[0], now), newReq(k[2], now)
	runAsymChecks(t, "fal", "/rotating", []asymCheck{{"valid", valid, nil, 200, "accepted"}})
	rotating.serve(k[2].Public)
	runAsymChecks(t, "fal", "/rotating", []asymCheck{
		{"signed with the rotated key", rotated, nil, 200, "accepted"},
		{"duplicate delivery (same request id)", rotated, nil, 200, "duplicate"},
	})
	if got := rotating.hits.Load(); got != 2 {
		t.Errorf("rotation: the key set was fetched %d times, want 2", got)
	}

	second := newReq(k[1], now)
	checks := []asymCheck{
		{"valid", newReq(k[0], now), nil, 200, "accepted"},
		{"two keys served, signed with the second", second, nil, 200, "accepted"},
		{"tampered body", newReq(k[0], now), func(b string, h []string) (string, []string) {
			return strings.Replace(b, `"status":"OK"`, `"status":"ERROR"`, 1), h
		}, 401, "no signature in " + sigH + " matches fal's published keys"},
		{"missing user id", newReq(k[0], now), func(b string, h []string) (string, []string) {
			return b, dropHeader(h, "X-Fal-Webhook-User-Id")
		}, 401, "X-Fal-Webhook-User-Id is missing"},
		{"missing signature", newReq(k[0], now), func(b string, h []string) (string, []string) {
			return b, dropHeader(h, sigH)
		}, 401, sigH + " is missing"},
		{"malformed signature", newReq(k[0], now), func(b string, h []string) (string, []string) {
			return b, setHeader(h, sigH, "abc")
		}, 401, sigH + " is malformed"},
		{"malformed timestamp", newReq(k[0], now), func(b string, h []string) (string, []string) {
			return b, setHeader(h, "X-Fal-Webhook-Timestamp", "2026-12-06")
		}, 401, "X-Fal-Webhook-Timestamp is malformed"},
		{"stale timestamp", newReq(k[0], now-301), nil, 401, "outside the tolerance"},
		{"request id replaced", newReq(k[0], now), func(b string, h []string) (string, []string) {
			return b, setHeader(h, "X-Fal-Webhook-Request-Id", "req-replayed")
		}, 401, "no signature"},
	}
	for i := range 10 {
		checks = append(checks, asymCheck{fmt.Sprint("forged ", i), newReq(k[3], now), nil, 401, "no signature in " + sigH + " matches"})
	}
	runAsymChecks(t, "fal", "/steady", checks)
	// the first request fetched the keys; the first miss (the tampered
	// body) fetched them again; nothing else within 30s
	if got := steady.hits.Load(); got != 2 {
		t.Errorf("%d fetches after one miss and ten forged signatures, want 2 (the first, one refresh)", got)
	}
	up.waitDelivered(t, []byte(checks[0].req.Body))
	up.waitDelivered(t, []byte(second.Body))

	// nothing to check with: 503, the sender retries
	unreachable := newReq(k[0], now)
	signed := signAll(t, []asymRequest{unreachable})[0]
	for i := range 2 {
		a := post(t, relayURL("/down", ""), []byte(unreachable.Body), signed...)
		if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" ||
			!strings.HasPrefix(a.body, "503 [unavailable] verify fal") || !strings.Contains(a.body, "cannot be fetched") {
			t.Errorf("key set unreachable, request %d: %d %q (Retry-After %q), want 503 with Retry-After",
				i+1, a.status, a.body, a.header.Get("Retry-After"))
		}
	}
	for _, h := range up.all() {
		if h.Path == "/down" {
			t.Errorf("the upstream received %q while the keys could not be fetched", h.Body)
		}
	}
}

// TestVerifyAsymConfigErrors: a Discord key that is not 32 bytes of hex,
// a SendGrid key that is not a P-256 public key, a secret for fal and
// jwks on another scheme are config errors that say what is wrong and
// show no key; verify fal with no secret loads without fetching the keys.
func TestVerifyAsymConfigErrors(t *testing.T) {
	discordKey := keyPairs(t, "discord", 1)[0].Public
	cases := []struct {
		name, verify, want string
	}{
		{"discord key too short", "verify discord " + discordKey[:62], "verify discord: key #1: 31 bytes, but an Ed25519 public key is 32"},
		{"discord key not hex", "verify discord " + discordKey + " zz" + discordKey[2:], "verify discord: key #2: not hex"},
		{"sendgrid key not base64", "verify sendgrid MFkwEwYHKoZIzj0CAQYI!", "verify sendgrid: key #1: not base64"},
		{"sendgrid key not a key", "verify sendgrid bm90IGEga2V5IGF0IGFsbA==", "verify sendgrid: key #1: not a public key"},
		// an Ed25519 key (Discord's) where SendGrid's P-256 key goes
		{"sendgrid key not P-256", "verify sendgrid MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=", "verify sendgrid: key #1: a public key, but not ECDSA P-256"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		store memory
		%s
	}`, relayName(t), c.verify)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("validate: %v, want %q", err, c.want)
			}
			for _, arg := range strings.Fields(c.verify)[2:] {
				if strings.Contains(err.Error(), arg) {
					t.Errorf("the error %q shows the key %q", err, arg)
				}
			}
		})
	}

	adapt := func(directives string) error {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site(directives)), nil)
		return err
	}
	for _, c := range []struct{ name, verify, want string }{
		{"jwks on discord", "verify discord " + discordKey + " {\n\t\t\tjwks https://example.com/jwks.json\n\t\t}", "verify discord: jwks is for verify fal only"},
		{"fal with a secret", "verify fal some-secret", "verify fal: takes no secret"},
		{"jwks with no address", "verify fal {\n\t\t\tjwks\n\t\t}", "wrong argument count"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := adapt(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		store memory
		%s
	}`, relayName(t), c.verify))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("adapting: %v, want %q", err, c.want)
			}
		})
	}

	// the JSON config, which the Caddyfile parser does not guard
	t.Run("jwks on sendgrid in JSON", func(t *testing.T) {
		cfg := fmt.Sprintf(`{"apps":{"http":{"servers":{"s":{"listen":[":%d"],"routes":[{"handle":[{
			"handler":"webhook_relay","name":%q,"upstream":"http://127.0.0.1:9/hook","store":{"type":"memory"},
			"verify":{"scheme":"sendgrid","secrets":["x"],"jwks":"https://example.com/jwks.json"}}]}]}}}}}`, relayPort, relayName(t))
		var c caddy.Config
		if err := json.Unmarshal([]byte(cfg), &c); err != nil {
			t.Fatal(err)
		}
		if err := caddy.Validate(&c); err == nil || !strings.Contains(err.Error(), "verify sendgrid: jwks is for verify fal only") {
			t.Errorf("validate: %v, want jwks refused", err)
		}
	})

	t.Run("fal loads without fetching", func(t *testing.T) {
		srv := newJWKSServer(t, keyPairs(t, "fal", 1)[0].Public)
		if err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		store memory
		verify fal {
			jwks %s
		}
	}`, relayName(t), srv.URL))); err != nil {
			t.Fatalf("verify fal with no secret: %v", err)
		}
		unreachable := fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		store memory
		verify fal {
			jwks %s
		}
	}`, relayName(t), closedURL(t))
		if err := validate(t, site(unreachable)); err != nil {
			t.Fatalf("verify fal with an unreachable key set: %v, want it to load (the keys are fetched on the first request)", err)
		}
		if n := srv.hits.Load(); n != 0 {
			t.Errorf("loading fetched the keys %d times, want 0", n)
		}
	})
}
