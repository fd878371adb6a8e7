package caddytest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// senderSignRequest is a signRequest with the URL Twilio signs.
type senderSignRequest struct {
	signRequest
	URL string `json:"url,omitempty"`
}

// senderSecrets are the current and the rotated secret of the schemes
// added with Zoom, Meta, X, ElevenLabs, GitLab and the presets.
var senderSecrets = map[string][2]string{
	"zoom":       {"zoom-current", "zoom-older"},
	"meta":       {"meta-app-current", "meta-app-older"},
	"twitter":    {"x-consumer-current", "x-consumer-older"},
	"elevenlabs": {"wsec_current", "wsec_older"},
	"gitlab":     {"gitlab-token-current", "gitlab-token-older"},
	"openai":     {"whsec_" + base64.StdEncoding.EncodeToString([]byte("openai current")), "whsec_" + base64.StdEncoding.EncodeToString([]byte("openai older"))},
	"replicate":  {"whsec_" + base64.StdEncoding.EncodeToString([]byte("replicate current")), "whsec_" + base64.StdEncoding.EncodeToString([]byte("replicate older"))},
	"clerk":      {"whsec_" + base64.StdEncoding.EncodeToString([]byte("clerk current")), "whsec_" + base64.StdEncoding.EncodeToString([]byte("clerk older"))},
	"resend":     {"whsec_" + base64.StdEncoding.EncodeToString([]byte("resend current")), "whsec_" + base64.StdEncoding.EncodeToString([]byte("resend older"))},
}

var senderSigHeader = map[string]string{
	"zoom": "x-zm-signature", "meta": "X-Hub-Signature-256", "twitter": "x-twitter-webhooks-signature",
	"elevenlabs": "ElevenLabs-Signature", "gitlab": "X-Gitlab-Token", "openai": "webhook-signature",
	"replicate": "webhook-signature", "clerk": "svix-signature", "resend": "svix-signature",
}

var senderTimestamped = map[string]bool{"zoom": true, "elevenlabs": true, "openai": true, "replicate": true, "clerk": true, "resend": true}

// withHeader replaces (or, with value "", drops) the header name.
func withHeader(headers []string, name, value string) []string {
	var out []string
	for _, f := range headers {
		if !strings.EqualFold(strings.SplitN(f, ":", 2)[0], name) {
			out = append(out, f)
		}
	}
	if value != "" {
		out = append(out, name+": "+value)
	}
	return out
}

// TestVerifySenders: each new scheme's requests, signed as the provider
// documents it (the presets by the standardwebhooks and svix libraries),
// pass or fail through a real Caddy: valid, rotated secret, tampered body,
// wrong secret, missing and malformed header, stale timestamp.
func TestVerifySenders(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	var relays strings.Builder
	for scheme, secrets := range senderSecrets {
		fmt.Fprintf(&relays, `
	webhook_relay /s/%s {
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
		edit   func(body string, headers []string) (string, []string)
		status int
		want   string
	}
	n := 0
	newReq := func(scheme, secret string, ts int64) signRequest {
		n++
		id := fmt.Sprintf("evt_%s_%d", scheme, n)
		return signRequest{Scheme: scheme, Secret: secret, ID: id, Timestamp: ts,
			Body: fmt.Sprintf(`{"id":%q,"event":"test.event","payload":{"n":%d}}`, id, n)}
	}
	for scheme, secrets := range senderSecrets {
		t.Run(scheme, func(t *testing.T) {
			now := time.Now().Unix()
			sigH := senderSigHeader[scheme]
			checks := []check{
				{"valid", newReq(scheme, secrets[0], now), nil, 200, "accepted"},
				{"rotated secret", newReq(scheme, secrets[1], now), nil, 200, "accepted"},
				{"wrong secret", newReq(scheme, "whsec_"+base64.StdEncoding.EncodeToString([]byte("not the secret")), now), nil, 401, "match"},
				{"missing header", newReq(scheme, secrets[0], now), func(b string, h []string) (string, []string) {
					return b, withHeader(h, sigH, "")
				}, 401, "missing"},
			}
			if scheme != "gitlab" { // GitLab's token covers no body, and any text is a token
				checks = append(checks,
					check{"tampered body", newReq(scheme, secrets[0], now), func(b string, h []string) (string, []string) {
						return strings.Replace(b, `"test.event"`, `"test.evil"`, 1), h
					}, 401, "no signature"},
					check{"malformed header", newReq(scheme, secrets[0], now), func(b string, h []string) (string, []string) {
						return b, withHeader(h, sigH, "garbage")
					}, 401, "malformed"})
			}
			if senderTimestamped[scheme] {
				checks = append(checks, check{"stale timestamp", newReq(scheme, secrets[0], now-3*3600), nil, 401, "outside the tolerance"})
			}
			if scheme == "twitter" {
				// only JSON objects, so that no CRC answer signs a body
				notObject := newReq(scheme, secrets[0], now)
				notObject.Body = "12345"
				checks = append(checks, check{"signed body that is not a JSON object", notObject, nil, 400, "not a JSON object"})
			}
			reqs := make([]signRequest, len(checks))
			for i, c := range checks {
				reqs[i] = c.req
			}
			signed := signAll(t, reqs)
			for i, c := range checks {
				body, headers := c.req.Body, signed[i]
				if c.edit != nil {
					body, headers = c.edit(body, headers)
				}
				a := post(t, relayURL("/s/"+scheme, ""), []byte(body), headers...)
				switch {
				case a.status != c.status:
					t.Errorf("%s: status %d, want %d (%q)", c.name, a.status, c.status, a.body)
				case c.status == 200 && !strings.Contains(a.body, `"`+c.want+`"`):
					t.Errorf("%s: answered %q, want %s", c.name, a.body, c.want)
				case c.status == 401 && !(strings.HasPrefix(a.body, "401 [unauthorized] verify "+scheme) && strings.Contains(a.body, c.want)):
					t.Errorf("%s: 401 says %q, want the scheme and %q", c.name, a.body, c.want)
				case c.status == 400 && !strings.Contains(a.body, c.want):
					t.Errorf("%s: 400 says %q, want %q", c.name, a.body, c.want)
				}
				if strings.Contains(a.body, secrets[0]) || strings.Contains(a.body, secrets[1]) {
					t.Errorf("%s: the answer %q shows a secret", c.name, a.body)
				}
			}
			var hits []*hit
			for _, body := range []string{checks[0].req.Body, checks[1].req.Body} {
				hits = append(hits, up.waitDelivered(t, []byte(body))...)
			}
			if scheme == "gitlab" {
				noneCarries(t, hits, secrets[0], secrets[1])
				if got := hits[0].Header.Get("X-Gitlab-Event"); got != "Push Hook" {
					t.Errorf("X-Gitlab-Event reached the upstream as %q, want Push Hook", got)
				}
			}
		})
	}
}

// TestVerifyGitlabTokenIsNeverKept: forward_headers, a key or auth_header
// naming X-Gitlab-Token with verify gitlab is a config error: the token
// would be stored, forwarded or shown.
func TestVerifyGitlabTokenIsNeverKept(t *testing.T) {
	for extra, want := range map[string]string{
		"forward_headers X-Gitlab-Token":   "forward_headers X-Gitlab-Token",
		"key header.x-gitlab-token":        "key header.x-gitlab-token",
		"auth_header X-Gitlab-Token other": "auth_header X-Gitlab-Token",
	} {
		err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		store memory
		verify gitlab gitlab-s3cret
		%s
	}`, relayName(t), extra)))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "gitlab-s3cret") {
			t.Errorf("%s: %v, want a config error saying %q without the token", extra, err, want)
		}
	}
}

// TestVerifySenderOptions: verify_token belongs to meta, base_url to
// twilio; elsewhere, empty, or a base_url with a path, each is a config
// error naming the problem.
func TestVerifySenderOptions(t *testing.T) {
	unsetEnv(t, unsetVar)
	for block, want := range map[string]string{
		"verify github s {\n\t\tverify_token t\n\t}":                    "verify_token is for verify meta only",
		"verify zoom s {\n\t\tbase_url https://a.example\n\t}":          "base_url is for verify twilio only",
		"verify meta s {\n\t\tverify_token {env." + unsetVar + "}\n\t}": "verify_token resolves to empty",
		"verify twilio s {\n\t\tbase_url https://a.example/hooks\n\t}":  "want no path",
		"verify twilio s {\n\t\tbase_url hooks.example.com\n\t}":        "absolute http",
		"verify twilio s {\n\t\tbase_url https://a.example?x=1\n\t}":    "want no query",
		"verify meta s {\n\t\tverify_token a\n\t\tverify_token b\n\t}":  "given twice",
	} {
		cfg := site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		store memory
		%s
	}`, relayName(t), block))
		var msg string
		if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil); err != nil {
			msg = err.Error()
		} else if err := validate(t, cfg); err != nil {
			msg = err.Error()
		}
		if !strings.Contains(msg, want) {
			t.Errorf("%s: got %q, want an error saying %q", block, msg, want)
		}
	}
}

// TestVerifySenderOptionsAdapt: verify_token and base_url reach the JSON
// config as its verify_token and base_url fields.
func TestVerifySenderOptionsAdapt(t *testing.T) {
	for block, want := range map[string]string{
		"verify meta s {\n\t\tverify_token {env.META_VERIFY_TOKEN}\n\t}":      `"verify_token":"{env.META_VERIFY_TOKEN}"`,
		"verify twilio s {\n\t\tbase_url https://hooks.example.com:8443\n\t}": `"base_url":"https://hooks.example.com:8443"`,
	} {
		js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site(`
	webhook_relay /in http://127.0.0.1:9/hook {
		`+block+`
	}`)), nil)
		if err != nil || !strings.Contains(string(js), want) {
			t.Errorf("%s: adapted to %s (%v), want %s", block, js, err, want)
		}
	}
}

// twilioURL is the URL Twilio calls on the test Caddy.
func twilioURL(path, query string) string { return relayURL(path, query) }

// TestVerifyTwilio: signed by Twilio's own library (getExpectedTwilioSignature,
// validateRequestWithBody) over the URL as Caddy received it, before
// handle_path stripped its prefix, with the relay's auth_query in the
// query; a form body and a JSON body (bodySHA256); base_url behind
// another proxy.
func TestVerifyTwilio(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	const tok, tok2 = "twilio-auth-current", "twilio-auth-older"
	startCaddy(t, globalOptions+fmt.Sprintf(`
:%d {
	handle_path /twilio/* {
		webhook_relay {
			upstream %s/twilio
			name %s
			store memory
			auth_query token relay-tok
			verify twilio %s %s
		}
	}
	handle_path /tw-base/* {
		webhook_relay {
			upstream %s/tw-base
			name %s
			store memory
			verify twilio %s {
				base_url https://hooks.example.com
			}
		}
	}
	handle_errors {
		respond "{err.status_code} [{http.webhook_relay.outcome}] {err.message}"
	}
}`, relayPort, up.URL, relayName(t, "path"), tok, tok2, up.URL, relayName(t, "base"), tok))

	n := 0
	form := func() string {
		n++
		return url.Values{"MessageSid": {fmt.Sprintf("SM%032d", n)}, "From": {"+14158675309"}, "Body": {"hello & goodbye"}, "To": {"+15005550006"}}.Encode()
	}
	jsonBody := `{"event":"com.twilio.messaging.inbound-message.received","n":1}`
	sum := sha256.Sum256([]byte(jsonBody))
	hashQuery := "token=relay-tok&bodySHA256=" + hex.EncodeToString(sum[:])
	origin := fmt.Sprintf("http://127.0.0.1:%d", relayPort)

	type check struct {
		name     string
		req      senderSignRequest
		post     string // where it is sent; default req.URL
		edit     func(body string, headers []string) (string, []string)
		status   int
		want     string
		received string // the body the upstream gets
	}
	sr := func(secret, body, u string) senderSignRequest {
		return senderSignRequest{signRequest{Scheme: "twilio", Secret: secret, Body: body, ID: fmt.Sprint("idem-", n), Timestamp: time.Now().Unix()}, u}
	}
	valid, rotated, jsonReq, based := form(), form(), jsonBody, form()
	checks := []check{
		{"form body", sr(tok, valid, twilioURL("/twilio/sms", "token=relay-tok&x=1")), "", nil, 200, "accepted", valid},
		{"rotated token", sr(tok2, rotated, twilioURL("/twilio/sms", "token=relay-tok")), "", nil, 200, "accepted", rotated},
		{"JSON body with bodySHA256", sr(tok, jsonReq, twilioURL("/twilio/events", hashQuery)), "", nil, 200, "accepted", jsonReq},
		{"base_url", sr(tok, based, "https://hooks.example.com/tw-base/sms?a=b"), twilioURL("/tw-base/sms", "a=b"), nil, 200, "accepted", based},
		{"signed over the stripped path", sr(tok, form(), origin+"/sms?token=relay-tok"), twilioURL("/twilio/sms", "token=relay-tok"), nil, 401, "no signature", ""},
		{"signed without the query", sr(tok, form(), origin+"/twilio/sms"), twilioURL("/twilio/sms", "token=relay-tok"), nil, 401, "no signature", ""},
		{"without base_url the host differs", sr(tok, form(), origin+"/tw-base/sms"), twilioURL("/tw-base/sms", ""), nil, 401, "no signature", ""},
		{"tampered form", sr(tok, form(), twilioURL("/twilio/sms", "token=relay-tok")), "", func(b string, h []string) (string, []string) {
			return strings.Replace(b, "goodbye", "farewell", 1), h
		}, 401, "no signature", ""},
		{"tampered JSON", sr(tok, jsonBody, twilioURL("/twilio/events", hashQuery)), "", func(b string, h []string) (string, []string) {
			return strings.Replace(b, `"n":1`, `"n":2`, 1), h
		}, 401, "bodySHA256", ""},
		{"wrong token", sr("not-the-token", form(), twilioURL("/twilio/sms", "token=relay-tok")), "", nil, 401, "no signature", ""},
		{"missing header", sr(tok, form(), twilioURL("/twilio/sms", "token=relay-tok")), "", func(b string, h []string) (string, []string) {
			return b, withHeader(h, "X-Twilio-Signature", "")
		}, 401, "missing", ""},
		{"malformed header", sr(tok, form(), twilioURL("/twilio/sms", "token=relay-tok")), "", func(b string, h []string) (string, []string) {
			return b, withHeader(h, "X-Twilio-Signature", base64.StdEncoding.EncodeToString([]byte("not twenty bytes")))
		}, 401, "malformed", ""},
	}
	reqs := make([]senderSignRequest, len(checks))
	for i, c := range checks {
		reqs[i] = c.req
	}
	signed := signAll(t, reqs)
	for i, c := range checks {
		body, headers := c.req.Body, signed[i]
		if c.edit != nil {
			body, headers = c.edit(body, headers)
		}
		to := c.post
		if to == "" {
			to = c.req.URL
		}
		a := post(t, to, []byte(body), headers...)
		switch {
		case a.status != c.status:
			t.Errorf("%s: status %d, want %d (%q)", c.name, a.status, c.status, a.body)
		case !strings.Contains(a.body, c.want):
			t.Errorf("%s: answered %q, want %q", c.name, a.body, c.want)
		}
		if strings.Contains(a.body, tok) || strings.Contains(a.body, tok2) {
			t.Errorf("%s: the answer %q shows the auth token", c.name, a.body)
		}
	}
	for _, c := range checks {
		if c.received != "" {
			up.waitDelivered(t, []byte(c.received))
		}
	}
}

// The handshake tests below need the handler to answer handshakes
// (Handshake, HandshakeGET, GET let through when AnswersGET): they pass
// once that wiring is in.

// handshakeRelay starts one relay for scheme at /hs with the given verify
// line, and an upstream.
func handshakeRelay(t *testing.T, verifyLine string) *upstream {
	up := newUpstream(t, always(http.StatusOK))
	startCaddy(t, globalOptions+fmt.Sprintf(`
:%d {
	webhook_relay /hs {
		upstream %s/hook
		name %s
		store memory
		%s
	}
	handle_errors {
		respond "{err.status_code} [{http.webhook_relay.outcome}] {err.message}" {err.status_code}
	}
}`, relayPort, up.URL, relayName(t), verifyLine))
	return up
}

// onlyDelivered sends a signed payload, waits for it upstream, and fails
// unless it is all the upstream ever got: no handshake was forwarded.
func onlyDelivered(t *testing.T, up *upstream, body string, headers []string) {
	t.Helper()
	mustAccept(t, relayURL("/hs", ""), []byte(body), headers...)
	up.waitDelivered(t, []byte(body))
	if hits := up.all(); len(hits) != 1 || string(hits[0].Body) != body {
		t.Errorf("the upstream got %d requests, want only the payload: a handshake was forwarded:\n%s", len(hits), describe(hits))
	}
}

func hmacSHA256(key, msg string) []byte {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(msg))
	return m.Sum(nil)
}

func TestHandshakeZoom(t *testing.T) {
	secrets := senderSecrets["zoom"]
	up := handshakeRelay(t, "verify zoom "+secrets[0]+" "+secrets[1])
	const plain = "qgg8vlvZRS6UYooatFL8Aw"
	validation := `{"payload":{"plainToken":"` + plain + `"},"event_ts":1654503849680,"event":"endpoint.url_validation"}`
	now := time.Now().Unix()
	event := `{"event":"meeting.started","payload":{"object":{"id":"42"}},"event_ts":1654503849681}`
	signed := signAll(t, []signRequest{
		{Scheme: "zoom", Secret: secrets[1], Body: validation, ID: "z1", Timestamp: now},
		{Scheme: "zoom", Secret: secrets[0], Body: `{"event":"endpoint.url_validation","payload":{}}`, ID: "z2", Timestamp: now},
		{Scheme: "zoom", Secret: secrets[0], Body: event, ID: "z3", Timestamp: now},
	})
	a := post(t, relayURL("/hs", ""), []byte(validation), signed[0]...)
	var got map[string]string
	if a.status != 200 || json.Unmarshal([]byte(a.body), &got) != nil {
		t.Fatalf("signed validation: %d %q, want 200 JSON", a.status, a.body)
	}
	if want := hex.EncodeToString(hmacSHA256(secrets[1], plain)); got["plainToken"] != plain || got["encryptedToken"] != want {
		t.Errorf("signed validation answered %q, want plainToken %s and encryptedToken %s (the signing secret's)", a.body, plain, want)
	}
	if a := post(t, relayURL("/hs", ""), []byte(validation)); a.status != 401 || strings.Contains(a.body, "encryptedToken") {
		t.Errorf("unsigned validation: %d %q, want 401 and no answer", a.status, a.body)
	}
	if a := post(t, relayURL("/hs", ""), []byte(`{"event":"endpoint.url_validation","payload":{}}`), signed[1]...); a.status != 400 {
		t.Errorf("validation without plainToken: %d %q, want 400", a.status, a.body)
	}
	onlyDelivered(t, up, event, signed[2])
}

func TestHandshakeMeta(t *testing.T) {
	secrets := senderSecrets["meta"]
	const token = "meta-verify-token"
	up := handshakeRelay(t, fmt.Sprintf("verify meta %s %s {\n\t\t\tverify_token %s\n\t\t}", secrets[0], secrets[1], token))
	get := func(q string) answer {
		a, err := send(http.MethodGet, relayURL("/hs", q), nil)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := get("hub.mode=subscribe&hub.verify_token=" + token + "&hub.challenge=1158201444")
	if a.status != 200 || a.body != "1158201444" || !strings.HasPrefix(a.header.Get("Content-Type"), "text/plain") || a.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("right token: %d %q %v, want 200 with the challenge as text, nosniff", a.status, a.body, a.header)
	}
	if a := get("hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1"); a.status != 403 || strings.Contains(a.body, token) {
		t.Errorf("wrong token: %d %q, want 403 without the token", a.status, a.body)
	}
	if a := get("hub.mode=subscribe&hub.challenge=1"); a.status != 400 || !strings.Contains(a.body, "hub.verify_token") {
		t.Errorf("no token: %d %q, want 400 naming hub.verify_token", a.status, a.body)
	}
	body := `{"object":"page","entry":[{"id":"1","time":1,"changes":[]}]}`
	signed := signAll(t, []signRequest{{Scheme: "meta", Secret: secrets[1], Body: body, ID: "m1", Timestamp: time.Now().Unix()}})
	onlyDelivered(t, up, body, signed[0])
}

func TestHandshakeTwitter(t *testing.T) {
	secrets := senderSecrets["twitter"]
	up := handshakeRelay(t, "verify twitter "+secrets[0]+" "+secrets[1])
	const token = "M2RkODJkZmMtYjlkYi00NmQ4LTk0MGUtM2JjYzkwM2Q4MjQ0"
	a, err := send(http.MethodGet, relayURL("/hs", "crc_token="+token+"&nonce=MTc2OTUxODI5MjkxNA"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		ResponseToken string `json:"response_token"`
	}
	want := "sha256=" + base64.StdEncoding.EncodeToString(hmacSHA256(secrets[0], token))
	if a.status != 200 || json.Unmarshal([]byte(a.body), &got) != nil || got.ResponseToken != want {
		t.Errorf("CRC: %d %q, want 200 with response_token %s", a.status, a.body, want)
	}
	// a body as crc_token would get its own signature: refused
	body := `{"for_user_id":"2244994945","tweet_create_events":[{"text":"forged"}]}`
	for _, c := range []string{body, base64.StdEncoding.EncodeToString([]byte(body))} {
		a, err := send(http.MethodGet, relayURL("/hs", "crc_token="+url.QueryEscape(c)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if a.status != 400 {
			t.Errorf("crc_token %q: %d %q, want 400", c, a.status, a.body)
		}
	}
	signed := signAll(t, []signRequest{{Scheme: "twitter", Secret: secrets[1], Body: body, ID: "x1", Timestamp: time.Now().Unix()}})
	onlyDelivered(t, up, body, signed[0])
}
