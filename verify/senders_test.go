package verify

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The schemes that sign the body (and a timestamp) join TestSchemes and
// TestErrorsRevealNoSecretOrExpectedValue, signed as each provider
// documents it.
func init() {
	hexHeader := func(name, prefix string, parts func(t, body string) []string) signer {
		return func(secret, body string, ts time.Time) http.Header {
			h := http.Header{}
			h.Set(name, prefix+hex.EncodeToString(mac(sha256.New, []byte(secret), parts(strconv.FormatInt(ts.Unix(), 10), body)...)))
			return h
		}
	}
	signers["zoom"] = struct {
		secrets [2]string
		sign    signer
		sigH    string
	}{[2]string{"zoom one", "zoom two"}, func(secret, body string, ts time.Time) http.Header {
		t := strconv.FormatInt(ts.Unix(), 10)
		h := http.Header{}
		h.Set("x-zm-request-timestamp", t)
		h.Set("x-zm-signature", "v0="+hex.EncodeToString(mac(sha256.New, []byte(secret), "v0:", t, ":", body)))
		return h
	}, "x-zm-signature"}
	signers["meta"] = struct {
		secrets [2]string
		sign    signer
		sigH    string
	}{[2]string{"meta one", "meta two"}, hexHeader("X-Hub-Signature-256", "sha256=", func(_, body string) []string { return []string{body} }), "X-Hub-Signature-256"}
	signers["twitter"] = struct {
		secrets [2]string
		sign    signer
		sigH    string
	}{[2]string{"x one", "x two"}, func(secret, body string, _ time.Time) http.Header {
		h := http.Header{}
		h.Set("X-Twitter-Webhooks-Signature", "sha256="+base64.StdEncoding.EncodeToString(mac(sha256.New, []byte(secret), body)))
		return h
	}, "X-Twitter-Webhooks-Signature"}
	signers["elevenlabs"] = struct {
		secrets [2]string
		sign    signer
		sigH    string
	}{[2]string{"wsec_one", "wsec_two"}, func(secret, body string, ts time.Time) http.Header {
		t := strconv.FormatInt(ts.Unix(), 10)
		h := http.Header{}
		h.Set("ElevenLabs-Signature", "t="+t+",v0="+hex.EncodeToString(mac(sha256.New, []byte(secret), t, ".", body)))
		return h
	}, "ElevenLabs-Signature"}
	for _, p := range []struct{ name, base string }{{"openai", "standard_webhooks"}, {"replicate", "standard_webhooks"}, {"clerk", "svix"}, {"resend", "svix"}} {
		signers[p.name] = signers[p.base]
	}
}

func TestPresets(t *testing.T) {
	for name, base := range map[string]string{"openai": "standard_webhooks", "replicate": "standard_webhooks", "clerk": "svix", "resend": "svix"} {
		v := newVerifier(t, Config{Scheme: name, Secrets: []string{whsec}})
		b := newVerifier(t, Config{Scheme: base, Secrets: []string{whsec}})
		if v.Scheme() != name {
			t.Errorf("%s: Scheme() = %q", name, v.Scheme())
		}
		if !slices.Equal(v.DefaultKey(), b.DefaultKey()) || !slices.Equal(v.Headers(), b.Headers()) || v.Tolerance() != b.Tolerance() {
			t.Errorf("%s: key %v headers %v tolerance %v, want %s's", name, v.DefaultKey(), v.Headers(), v.Tolerance(), base)
		}
	}
}

func TestElevenLabsTolerance(t *testing.T) {
	v := newVerifier(t, Config{Scheme: "elevenlabs", Secrets: []string{"wsec_one"}})
	s := signers["elevenlabs"]
	ts := now.Add(-29 * time.Minute)
	if err := v.Verify(req(s.sign("wsec_one", "{}", ts)), []byte("{}"), now); err != nil {
		t.Errorf("29 minutes old: %v (ElevenLabs allows 30)", err)
	}
	ts = now.Add(-31 * time.Minute)
	if err := v.Verify(req(s.sign("wsec_one", "{}", ts)), []byte("{}"), now); err == nil {
		t.Error("31 minutes old passed")
	}
}

func status(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status()
	}
	return 0
}

// TestZoomValidation: a signed endpoint.url_validation is answered with
// the plainToken's HMAC under the secret that signed it (rotation); an
// unsigned one fails Verify and is never answered.
func TestZoomValidation(t *testing.T) {
	s := signers["zoom"]
	v := newVerifier(t, Config{Scheme: "zoom", Secrets: []string{s.secrets[0], s.secrets[1]}})
	body := `{"event":"endpoint.url_validation","payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680}`
	for i, secret := range s.secrets {
		r := req(s.sign(secret, body, now))
		if err := v.Verify(r, []byte(body), now); err != nil {
			t.Fatalf("signed with secret #%d: %v", i+1, err)
		}
		a, err := v.Handshake(r, []byte(body))
		if err != nil || a == nil {
			t.Fatalf("signed with secret #%d: Handshake = %v, %v", i+1, a, err)
		}
		want, _ := json.Marshal(map[string]string{"plainToken": "qgg8vlvZRS6UYooatFL8Aw",
			"encryptedToken": hex.EncodeToString(mac(sha256.New, []byte(secret), "qgg8vlvZRS6UYooatFL8Aw"))})
		var got, exp map[string]string
		json.Unmarshal(a.Body, &got)
		json.Unmarshal(want, &exp)
		if a.Status != 200 || a.ContentType != "application/json" || !maps.Equal(got, exp) {
			t.Errorf("signed with secret #%d: answered %d %s %s, want %s", i+1, a.Status, a.ContentType, a.Body, want)
		}
	}
	// unsigned, or signed with another secret: Verify fails (401), and
	// Handshake itself refuses to answer it
	for _, h := range []http.Header{{}, s.sign("not the secret", body, now)} {
		r := req(h)
		if err := v.Verify(r, []byte(body), now); status(err) != 401 {
			t.Errorf("unsigned validation: Verify = %v, want 401", err)
		}
		if a, err := v.Handshake(r, []byte(body)); a != nil || err == nil {
			t.Errorf("unsigned validation: Handshake answered %v", a)
		}
	}
	// a validation without a plainToken string: 400
	for _, bad := range []string{`{"event":"endpoint.url_validation","payload":{}}`, `{"event":"endpoint.url_validation","payload":{"plainToken":7}}`,
		`{"event":"endpoint.url_validation"}`, `{"event":"endpoint.url_validation","payload":{"plainToken":""}}`} {
		r := req(s.sign(s.secrets[0], bad, now))
		if a, err := v.Handshake(r, []byte(bad)); a != nil || status(err) != 400 {
			t.Errorf("%s: Handshake = %v, %v, want 400", bad, a, err)
		}
	}
	// an event is a payload
	event := `{"event":"meeting.started","payload":{"object":{"id":"1"}}}`
	if a, err := v.Handshake(req(s.sign(s.secrets[0], event, now)), []byte(event)); a != nil || err != nil {
		t.Errorf("an event: Handshake = %v, %v, want nil, nil", a, err)
	}
}

func getReq(query string) *http.Request {
	return &http.Request{Method: http.MethodGet, Header: http.Header{}, URL: &url.URL{Path: "/", RawQuery: query}, Host: "example.com"}
}

func TestMetaSubscribe(t *testing.T) {
	const token = "meta-verify-token-1"
	v := newVerifier(t, Config{Scheme: "meta", Secrets: []string{"app secret"}, VerifyToken: token})
	if !v.AnswersGET() {
		t.Fatal("AnswersGET false with verify_token set")
	}
	a, err := v.HandshakeGET(getReq("hub.mode=subscribe&hub.verify_token=" + token + "&hub.challenge=1158201444"))
	if err != nil || a.Status != 200 || string(a.Body) != "1158201444" || !strings.HasPrefix(a.ContentType, "text/plain") || !a.NoSniff {
		t.Errorf("right token: %+v, %v", a, err)
	}
	a, err = v.HandshakeGET(getReq("hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1158201444"))
	if a != nil || status(err) != 403 || !strings.Contains(err.Error(), "wrong") || strings.Contains(err.Error(), token) {
		t.Errorf("wrong token: %v, %v; want 403 saying it is wrong, without the token", a, err)
	}
	for q, want := range map[string]string{
		"hub.verify_token=" + token + "&hub.challenge=1": "hub.mode",
		"hub.mode=subscribe&hub.challenge=1":             "hub.verify_token",
		"hub.mode=subscribe&hub.verify_token=" + token:   "hub.challenge",
		"": "hub.mode, hub.verify_token, hub.challenge",
		"hub.mode=unsubscribe&hub.verify_token=" + token + "&hub.challenge=1": "subscribe",
	} {
		a, err := v.HandshakeGET(getReq(q))
		if a != nil || status(err) != 400 || !strings.Contains(err.Error(), want) {
			t.Errorf("?%s: %v, %v; want 400 saying %q", q, a, err, want)
		}
	}
	// without verify_token, GET stays 405
	v = newVerifier(t, Config{Scheme: "meta", Secrets: []string{"app secret"}})
	if v.AnswersGET() {
		t.Error("AnswersGET true without verify_token")
	}
	if a, err := v.HandshakeGET(getReq("hub.mode=subscribe&hub.verify_token=&hub.challenge=1")); a != nil || status(err) != 405 {
		t.Errorf("without verify_token: %v, %v, want 405", a, err)
	}
}

func crcAnswer(secret, token string) string {
	return "sha256=" + base64.StdEncoding.EncodeToString(mac(sha256.New, []byte(secret), token))
}

func TestTwitterCRC(t *testing.T) {
	s := signers["twitter"]
	v := newVerifier(t, Config{Scheme: "twitter", Secrets: []string{s.secrets[0], s.secrets[1]}})
	if !v.AnswersGET() {
		t.Fatal("AnswersGET false")
	}
	const token = "M2RkODJkZmMtYjlkYi00NmQ4LTk0MGUtM2JjYzkwM2Q4MjQ0" // the form X sends: base64 of a UUID
	a, err := v.HandshakeGET(getReq("crc_token=" + token + "&nonce=MTc2OTUxODI5MjkxNA"))
	var got struct {
		ResponseToken string `json:"response_token"`
	}
	if err != nil || a.Status != 200 || a.ContentType != "application/json" || json.Unmarshal(a.Body, &got) != nil || got.ResponseToken != crcAnswer(s.secrets[0], token) {
		t.Errorf("CRC: %+v, %v", a, err)
	}
	for _, q := range []string{"", "crc_token=", "crc_token=a&crc_token=b", "crc_token=" + strings.Repeat("A", 65), "crc_token=a%20b", "crc_token=%7B%7D"} {
		if a, err := v.HandshakeGET(getReq(q)); a != nil || status(err) != 400 {
			t.Errorf("?%s: %v, %v, want 400", q, a, err)
		}
	}
}

// TestTwitterCRCIsNoSigningOracle: a body an attacker wants signed cannot
// get its event signature from the CRC, in any encoding: either the token
// is refused, or the answer signs a string that is not a body the relay
// accepts.
func TestTwitterCRCIsNoSigningOracle(t *testing.T) {
	s := signers["twitter"]
	v := newVerifier(t, Config{Scheme: "twitter", Secrets: []string{s.secrets[0]}})
	forged := []string{`{"for_user_id":"1","tweet_create_events":[{"text":"forged"}]}`, `{}`, ` {"a":1}`, `[1]`, `1`, `"x"`, `true`}
	for _, body := range forged {
		encodings := map[string]string{
			"raw":        body,
			"base64":     base64.StdEncoding.EncodeToString([]byte(body)),
			"base64url":  base64.RawURLEncoding.EncodeToString([]byte(body)),
			"hex":        hex.EncodeToString([]byte(body)),
			"urlencoded": url.QueryEscape(body),
		}
		for enc, c := range encodings {
			a, err := v.HandshakeGET(getReq("crc_token=" + url.QueryEscape(c)))
			if err != nil {
				if status(err) != 400 {
					t.Errorf("%s as %s: %v, want 400", body, enc, err)
				}
				continue
			}
			var got struct {
				ResponseToken string `json:"response_token"`
			}
			json.Unmarshal(a.Body, &got)
			h := http.Header{}
			h.Set("X-Twitter-Webhooks-Signature", got.ResponseToken)
			// the answer is a signature of c itself; neither the body nor
			// c passes as an event with it
			if err := v.Verify(req(h), []byte(body), now); err == nil {
				t.Errorf("%s as %s: the CRC answer signs the forged body", body, enc)
			}
			if err := v.Verify(req(h), []byte(c), now); err == nil {
				t.Errorf("%s as %s: the CRC answer signs an event body %q", body, enc, c)
			}
		}
	}
	// and no token the CRC answers is a body Verify accepts: bodies begin
	// with "{", which no token has
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_"
	for b := 0; b < 256; b++ {
		c := string(rune(b))
		if b < 128 && crcToken(c) != strings.Contains(alphabet, c) {
			t.Errorf("crcToken(%q) = %v", c, crcToken(c))
		}
		if crcToken(c+"AAAA") && twitterBody([]byte(c+"AAAA")) == nil {
			t.Errorf("a token starting %q is an accepted body", c)
		}
	}
	for _, c := range []string{"1", "123", "true", "null", "e30", "e30="} {
		h := http.Header{}
		h.Set("X-Twitter-Webhooks-Signature", crcAnswer(s.secrets[0], c))
		if err := v.Verify(req(h), []byte(c), now); status(err) != 400 {
			t.Errorf("body %q signed as its CRC answer: %v, want refused 400", c, err)
		}
	}
}

func TestGitlab(t *testing.T) {
	v := newVerifier(t, Config{Scheme: "gitlab", Secrets: []string{"glpat-one", "glpat-two"}})
	with := func(token string) *http.Request {
		h := http.Header{}
		if token != "" {
			h.Set("X-Gitlab-Token", token)
		}
		h.Set("X-Gitlab-Event", "Push Hook")
		return req(h)
	}
	for _, tok := range []string{"glpat-one", "glpat-two"} {
		if err := v.CheckHeaders(with(tok), now); err != nil {
			t.Errorf("%s: CheckHeaders: %v", tok, err)
		}
		if err := v.Verify(with(tok), []byte(`{"object_kind":"push"}`), now); err != nil {
			t.Errorf("%s: Verify: %v", tok, err)
		}
	}
	for tok, want := range map[string]string{"": "missing", "glpat-on": "does not match", "glpat-one ": "does not match", "GLPAT-ONE": "does not match"} {
		err := v.CheckHeaders(with(tok), now) // before any body
		if status(err) != 401 || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "glpat-one") {
			t.Errorf("token %q: CheckHeaders = %v, want 401 saying %q and no token", tok, err, want)
		}
		if err := v.Verify(with(tok), []byte("{}"), now); err == nil {
			t.Errorf("token %q: Verify passed", tok)
		}
	}
	for _, h := range v.Headers() {
		if strings.EqualFold(h, "X-Gitlab-Token") {
			t.Errorf("Headers() %v has the token header: it would be stored and forwarded", v.Headers())
		}
	}
	if got := v.SecretHeaders(); len(got) != 1 || got[0] != "X-Gitlab-Token" {
		t.Errorf("SecretHeaders() = %v", got)
	}
	if got := newVerifier(t, Config{Scheme: "github", Secrets: []string{"x"}}).SecretHeaders(); got != nil {
		t.Errorf("github: SecretHeaders() = %v", got)
	}
}

// twilioSign signs as Twilio's docs (and its libraries) describe: the URL,
// then each form parameter's name and value, sorted by name.
func twilioSign(token, fullURL string, form url.Values) string {
	var b strings.Builder
	b.WriteString(fullURL)
	for _, k := range slices.Sorted(maps.Keys(form)) {
		for _, val := range slices.Sorted(slices.Values(form[k])) {
			b.WriteString(k + val)
		}
	}
	return base64.StdEncoding.EncodeToString(mac(sha1.New, []byte(token), b.String()))
}

func twilioReq(method, host, uri, sig, contentType string, tlsOn bool) *http.Request {
	u, _ := url.ParseRequestURI(uri)
	r := &http.Request{Method: method, Header: http.Header{}, URL: u, Host: host, RequestURI: uri}
	if sig != "" {
		r.Header.Set("X-Twilio-Signature", sig)
	}
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	if tlsOn {
		r.TLS = &tls.ConnectionState{}
	}
	return r.WithContext(context.Background())
}

func TestTwilio(t *testing.T) {
	const tok, tok2 = "twilio-auth-token-1", "twilio-auth-token-2"
	v := newVerifier(t, Config{Scheme: "twilio", Secrets: []string{tok, tok2}})
	form := url.Values{"CallSid": {"CA123"}, "From": {"+14158675309"}, "Body": {"hi there & more"}, "To": {"+1", "+0"}}
	body := []byte(form.Encode())
	const ct = "application/x-www-form-urlencoded"
	uri := "/twilio/sms?token=relay-tok&x=1"
	check := func(r *http.Request, body []byte) error { return v.Verify(r, body, now) }

	if err := check(twilioReq("POST", "hooks.example.com", uri, twilioSign(tok, "https://hooks.example.com"+uri, form), ct, true), body); err != nil {
		t.Errorf("form body: %v", err)
	}
	if err := check(twilioReq("POST", "hooks.example.com", uri, twilioSign(tok2, "https://hooks.example.com"+uri, form), ct, true), body); err != nil {
		t.Errorf("rotated token: %v", err)
	}
	// Twilio signed the URL with the default port, or the request names one
	if err := check(twilioReq("POST", "hooks.example.com", uri, twilioSign(tok, "https://hooks.example.com:443"+uri, form), ct, true), body); err != nil {
		t.Errorf("signed with :443: %v", err)
	}
	if err := check(twilioReq("POST", "hooks.example.com:443", uri, twilioSign(tok, "https://hooks.example.com"+uri, form), ct, true), body); err != nil {
		t.Errorf("received with :443, signed without: %v", err)
	}
	if err := check(twilioReq("POST", "127.0.0.1:8080", uri, twilioSign(tok, "http://127.0.0.1:8080"+uri, form), ct, false), body); err != nil {
		t.Errorf("http with a port: %v", err)
	}
	// the URL Caddy received, before handle_path stripped /twilio
	r := twilioReq("POST", "hooks.example.com", "/sms?token=relay-tok&x=1", twilioSign(tok, "https://hooks.example.com"+uri, form), ct, true)
	u, _ := url.ParseRequestURI(uri)
	orig := http.Request{Method: "POST", RequestURI: uri, URL: u} // what Caddy keeps: no host, no TLS
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.OriginalRequestCtxKey, orig))
	if err := check(r, body); err != nil {
		t.Errorf("stripped path, original URI signed: %v", err)
	}
	// base_url: Twilio called https://public.example.com, a proxy passed it on
	vb := newVerifier(t, Config{Scheme: "twilio", Secrets: []string{tok}, BaseURL: "https://public.example.com"})
	if err := vb.Verify(twilioReq("POST", "10.0.0.5:8080", uri, twilioSign(tok, "https://public.example.com"+uri, form), ct, false), body, now); err != nil {
		t.Errorf("base_url: %v", err)
	}
	if err := v.Verify(twilioReq("POST", "10.0.0.5:8080", uri, twilioSign(tok, "https://public.example.com"+uri, form), ct, false), body, now); err == nil {
		t.Error("without base_url, a signature of another host passed")
	}

	fails := map[string]struct {
		r    *http.Request
		body []byte
		want string
	}{
		"tampered form":           {twilioReq("POST", "h.example", uri, twilioSign(tok, "https://h.example"+uri, form), ct, true), []byte(strings.Replace(string(body), "CA123", "CA999", 1)), "no signature"},
		"wrong token":             {twilioReq("POST", "h.example", uri, twilioSign("other", "https://h.example"+uri, form), ct, true), body, "no signature"},
		"other path":              {twilioReq("POST", "h.example", "/twilio/other?token=relay-tok&x=1", twilioSign(tok, "https://h.example"+uri, form), ct, true), body, "no signature"},
		"http, not https":         {twilioReq("POST", "h.example", uri, twilioSign(tok, "https://h.example"+uri, form), ct, false), body, "no signature"},
		"missing header":          {twilioReq("POST", "h.example", uri, "", ct, true), body, "missing"},
		"malformed":               {twilioReq("POST", "h.example", uri, base64.StdEncoding.EncodeToString([]byte("short")), ct, true), body, "malformed"},
		"json without bodySHA256": {twilioReq("POST", "h.example", uri, twilioSign(tok, "https://h.example"+uri, nil), "application/json", true), []byte(`{"a":1}`), "not signed"},
	}
	for name, f := range fails {
		if err := check(f.r, f.body); status(err) != 401 || !strings.Contains(err.Error(), f.want) {
			t.Errorf("%s: %v, want 401 saying %q", name, err, f.want)
		}
	}
	if err := v.CheckHeaders(twilioReq("POST", "h.example", uri, "not base64!", ct, true), now); err == nil {
		t.Error("CheckHeaders passed a malformed signature")
	}

	// the JSON variant: bodySHA256 in the URL, the URL alone signed
	jsonBody := []byte(`{"event":"x","n":1}`)
	sum := sha256.Sum256(jsonBody)
	juri := "/twilio/events?token=relay-tok&bodySHA256=" + hex.EncodeToString(sum[:])
	jsig := twilioSign(tok, "https://h.example"+juri, nil)
	if err := check(twilioReq("POST", "h.example", juri, jsig, "application/json", true), jsonBody); err != nil {
		t.Errorf("JSON body with bodySHA256: %v", err)
	}
	if err := check(twilioReq("POST", "h.example", juri, jsig, "application/json", true), []byte(`{"event":"x","n":2}`)); status(err) != 401 || !strings.Contains(err.Error(), "bodySHA256") {
		t.Errorf("JSON body changed: %v, want 401 about bodySHA256", err)
	}
}

func TestSenderConfigErrors(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Scheme: "github", Secrets: []string{"x"}, VerifyToken: "t"}, "verify_token is for verify meta only"},
		{Config{Scheme: "meta", Secrets: []string{"x"}, VerifyToken: "{empty}"}, "verify_token resolves to empty"},
		{Config{Scheme: "github", Secrets: []string{"x"}, BaseURL: "https://a.example"}, "base_url is for verify twilio only"},
		{Config{Scheme: "twilio", Secrets: []string{"x"}, BaseURL: "{empty}"}, "base_url resolves to empty"},
		{Config{Scheme: "twilio", Secrets: []string{"x"}, BaseURL: "a.example"}, "absolute http"},
		{Config{Scheme: "twilio", Secrets: []string{"x"}, BaseURL: "ftp://a.example"}, "absolute http"},
		{Config{Scheme: "twilio", Secrets: []string{"x"}, BaseURL: "https://a.example/hooks"}, "want no path"},
		{Config{Scheme: "twilio", Secrets: []string{"x"}, BaseURL: "https://a.example?x=1"}, "want no query"},
		{Config{Scheme: "twilio", Secrets: []string{"x"}, BaseURL: "https://a.example:99999"}, "port"},
		{Config{Scheme: "twilio", Secrets: []string{"x"}, BaseURL: "https://u:p@a.example"}, "user"},
		{Config{Scheme: "twilio", Secrets: []string{"x"}, BaseURL: "https://"}, "no host"},
		{Config{Scheme: "zoom", Secrets: []string{"x"}, VerifyToken: "t"}, "verify_token is for verify meta only"},
	}
	resolve := func(s string) (string, error) {
		if s == "{empty}" {
			return "", nil
		}
		return s, nil
	}
	for _, tc := range tests {
		_, err := New(tc.cfg, resolve)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error saying %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := New(Config{Scheme: "twilio", Secrets: []string{"x"}, BaseURL: "https://a.example:8443/"}, resolve); err != nil {
		t.Errorf("base_url with a port and a trailing slash: %v", err)
	}
}
