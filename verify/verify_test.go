package verify

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// These unit tests sign with a few lines of HMAC written from each
// provider's documentation; the interop tests in caddytest sign with the
// providers' own libraries.

var now = time.Unix(1_790_000_000, 0)

func mac(newHash func() hash.Hash, key []byte, parts ...string) []byte {
	m := hmac.New(newHash, key)
	for _, p := range parts {
		m.Write([]byte(p))
	}
	return m.Sum(nil)
}

// signer signs body with secret at ts the way one scheme does.
type signer func(secret string, body string, ts time.Time) http.Header

const whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func standardSigner(prefix string) signer {
	return func(secret, body string, ts time.Time) http.Header {
		key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
		t := strconv.FormatInt(ts.Unix(), 10)
		sig := base64.StdEncoding.EncodeToString(mac(sha256.New, key, "msg_1", ".", t, ".", body))
		h := http.Header{}
		h.Set(prefix+"-id", "msg_1")
		h.Set(prefix+"-timestamp", t)
		h.Set(prefix+"-signature", "v1a,ignored v1,"+sig)
		return h
	}
}

var signers = map[string]struct {
	secrets [2]string // the configured one and its rotated successor
	sign    signer
	sigH    string // the header holding the signature
}{
	"standard_webhooks": {[2]string{whsec, "whsec_" + base64.StdEncoding.EncodeToString([]byte("next key"))}, standardSigner("webhook"), "webhook-signature"},
	"svix":              {[2]string{whsec, "whsec_" + base64.StdEncoding.EncodeToString([]byte("next key"))}, standardSigner("svix"), "svix-signature"},
	"stripe": {[2]string{"whsec_stripe_one", "whsec_stripe_two"}, func(secret, body string, ts time.Time) http.Header {
		t := strconv.FormatInt(ts.Unix(), 10)
		h := http.Header{}
		h.Set("Stripe-Signature", "t="+t+",v1="+hex.EncodeToString(mac(sha256.New, []byte(secret), t, ".", body))+",v0=00")
		return h
	}, "Stripe-Signature"},
	"github": {[2]string{"gh one", "gh two"}, func(secret, body string, _ time.Time) http.Header {
		h := http.Header{}
		h.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac(sha256.New, []byte(secret), body)))
		return h
	}, "X-Hub-Signature-256"},
	"shopify": {[2]string{"shp one", "shp two"}, func(secret, body string, _ time.Time) http.Header {
		h := http.Header{}
		h.Set("X-Shopify-Hmac-Sha256", base64.StdEncoding.EncodeToString(mac(sha256.New, []byte(secret), body)))
		return h
	}, "X-Shopify-Hmac-Sha256"},
	"slack": {[2]string{"slack one", "slack two"}, func(secret, body string, ts time.Time) http.Header {
		t := strconv.FormatInt(ts.Unix(), 10)
		h := http.Header{}
		h.Set("X-Slack-Request-Timestamp", t)
		h.Set("X-Slack-Signature", "v0="+hex.EncodeToString(mac(sha256.New, []byte(secret), "v0:", t, ":", body)))
		return h
	}, "X-Slack-Signature"},
	"paddle": {[2]string{"pdl_one", "pdl_two"}, func(secret, body string, ts time.Time) http.Header {
		t := strconv.FormatInt(ts.Unix(), 10)
		h := http.Header{}
		h.Set("Paddle-Signature", "ts="+t+";h1="+hex.EncodeToString(mac(sha256.New, []byte(secret), t, ":", body)))
		return h
	}, "Paddle-Signature"},
	"linear": {[2]string{"lin one", "lin two"}, func(secret, body string, _ time.Time) http.Header {
		h := http.Header{}
		h.Set("Linear-Signature", hex.EncodeToString(mac(sha256.New, []byte(secret), body)))
		return h
	}, "Linear-Signature"},
}

func newVerifier(t *testing.T, cfg Config) *Verifier {
	t.Helper()
	v, err := New(cfg, func(s string) (string, error) { return s, nil })
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return v
}

// bodyAt is a JSON body; Linear's carries the signed time in it.
func bodyAt(ts time.Time) string {
	return fmt.Sprintf(`{"id":"evt_1","event_id":"Ev1","webhookTimestamp":%d,"data":{"n":1}}`, ts.UnixMilli())
}

func TestSchemes(t *testing.T) {
	for name, s := range signers {
		t.Run(name, func(t *testing.T) {
			v := newVerifier(t, Config{Scheme: name, Secrets: []string{s.secrets[0], s.secrets[1]}})
			body := bodyAt(now)
			check := func(h http.Header, body string) error { return v.Verify(req(h), []byte(body), now) }

			if err := check(s.sign(s.secrets[0], body, now), body); err != nil {
				t.Errorf("valid: %v", err)
			}
			if err := check(s.sign(s.secrets[1], body, now), body); err != nil {
				t.Errorf("signed with the rotated secret: %v", err)
			}
			wantFail := func(what string, err error, want string) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("%s: err = %v, want one saying %q", what, err, want)
				}
			}
			wantFail("tampered body", check(s.sign(s.secrets[0], body, now), strings.Replace(body, `"n":1`, `"n":2`, 1)), "no signature")
			wantFail("wrong secret", check(s.sign("whsec_"+base64.StdEncoding.EncodeToString([]byte("wrong")), body, now), body), "no signature")
			h := s.sign(s.secrets[0], body, now)
			h.Del(s.sigH)
			wantFail("missing header", check(h, body), "missing")
			h = s.sign(s.secrets[0], body, now)
			h.Set(s.sigH, "garbage")
			wantFail("malformed header", check(h, body), "malformed")
			if v.tolerance > 0 {
				stale := now.Add(-v.tolerance - time.Minute)
				old := bodyAt(stale)
				wantFail("stale timestamp", check(s.sign(s.secrets[0], old, stale), old), "outside the tolerance")
				future := now.Add(v.tolerance + time.Minute)
				soon := bodyAt(future)
				wantFail("future timestamp", check(s.sign(s.secrets[0], soon, future), soon), "in the future")
				// further ahead than a time.Duration reaches: now.Sub
				// saturates, and negating the minimum overflows
				farAhead := now.AddDate(300, 0, 0)
				far := bodyAt(farAhead)
				wantFail("timestamp 300 years ahead", check(s.sign(s.secrets[0], far, farAhead), far), "in the future")
			}
		})
	}
}

func TestErrorsRevealNoSecretOrExpectedValue(t *testing.T) {
	for name, s := range signers {
		v := newVerifier(t, Config{Scheme: name, Secrets: []string{s.secrets[0]}})
		body := bodyAt(now)
		good := s.sign(s.secrets[0], body, now)
		err := v.Verify(req(s.sign("other", body, now)), []byte(body), now)
		if err == nil {
			t.Fatalf("%s: a wrong secret passed", name)
		}
		for _, vals := range good {
			for _, val := range vals {
				for _, part := range strings.FieldsFunc(val, func(r rune) bool { return strings.ContainsRune(" ,;=", r) }) {
					if len(part) >= 16 && strings.Contains(err.Error(), part) {
						t.Errorf("%s: error %q contains the expected signature", name, err)
					}
				}
			}
		}
		if strings.Contains(err.Error(), s.secrets[0]) {
			t.Errorf("%s: error %q contains the secret", name, err)
		}
	}
}

func TestToleranceOverride(t *testing.T) {
	s := signers["stripe"]
	v := newVerifier(t, Config{Scheme: "stripe", Secrets: []string{s.secrets[0]}, Tolerance: caddy.Duration(time.Hour)})
	ts := now.Add(-30 * time.Minute)
	if err := v.Verify(req(s.sign(s.secrets[0], "{}", ts)), []byte("{}"), now); err != nil {
		t.Errorf("30 min old with tolerance 1h: %v", err)
	}
}

func TestGenericHMAC(t *testing.T) {
	body := `{"x":1}`
	tests := []struct {
		cfg  Config
		sign string
	}{
		{Config{Header: "X-Signature"}, hex.EncodeToString(mac(sha256.New, []byte("k"), body))},
		{Config{Header: "X-Sig", Prefix: "sha1=", Algorithm: "sha1", Encoding: "base64"},
			"sha1=" + base64.StdEncoding.EncodeToString(mac(sha1.New, []byte("k"), body))},
	}
	for _, tc := range tests {
		tc.cfg.Scheme, tc.cfg.Secrets = "hmac", []string{"k"}
		v := newVerifier(t, tc.cfg)
		h := http.Header{}
		h.Set(tc.cfg.Header, tc.sign)
		if err := v.Verify(req(h), []byte(body), now); err != nil {
			t.Errorf("%+v: %v", tc.cfg, err)
		}
		if err := v.Verify(req(h), []byte(body+" "), now); err == nil {
			t.Errorf("%+v: a changed body passed", tc.cfg)
		}
		if got := v.Headers(); len(got) != 1 || got[0] != http.CanonicalHeaderKey(tc.cfg.Header) {
			t.Errorf("Headers() = %v", got)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Scheme: "acme", Secrets: []string{"x"}}, "unknown scheme"},
		{Config{Scheme: "github"}, "no secret"},
		{Config{Scheme: "github", Secrets: []string{""}}, "secret #1 resolves to empty"},
		{Config{Scheme: "svix", Secrets: []string{"whsec_not base64!"}}, `want "whsec_"`},
		{Config{Scheme: "github", Secrets: []string{"x"}, Tolerance: caddy.Duration(time.Minute)}, "signs no timestamp"},
		{Config{Scheme: "stripe", Secrets: []string{"x"}, Header: "X"}, "for verify hmac only"},
		{Config{Scheme: "hmac", Secrets: []string{"x"}}, "header is required"},
		{Config{Scheme: "hmac", Secrets: []string{"x"}, Header: "X", Algorithm: "md5"}, "algorithm"},
		{Config{Scheme: "hmac", Secrets: []string{"x"}, Header: "X", Encoding: "base32"}, "encoding"},
	}
	for _, tc := range tests {
		_, err := New(tc.cfg, func(s string) (string, error) { return s, nil })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error saying %q", tc.cfg, err, tc.want)
		}
	}
}

// TestSignStandardVerifies: what the relay signs upstream passes the relay's
// own standard_webhooks check (the caddytest interop test has the
// standardwebhooks library verify it too).
func TestSignStandardVerifies(t *testing.T) {
	key, err := StandardKey(whsec)
	if err != nil {
		t.Fatal(err)
	}
	v := newVerifier(t, Config{Scheme: "standard_webhooks", Secrets: []string{whsec}})
	body := []byte(`{"a":1}`)
	h := http.Header{}
	h.Set("webhook-id", "rw:abc")
	h.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	h.Set("webhook-signature", SignStandard(key, "rw:abc", now, body))
	if err := v.Verify(req(h), body, now); err != nil {
		t.Errorf("the relay's own signature fails its check: %v", err)
	}
	if _, err := StandardKey("whsec_%%%"); err == nil {
		t.Error("StandardKey accepted a secret that is not base64")
	}
}

// req is a POST carrying h, as the handler passes it to the checks.
func req(h http.Header) *http.Request {
	return &http.Request{Method: http.MethodPost, Header: h, URL: &url.URL{Path: "/"}, Host: "example.com"}
}
