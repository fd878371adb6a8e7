package verify

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// These unit tests sign with Go's crypto, following each provider's
// documentation; the interop tests in caddytest sign with node's crypto
// and check with the providers' own libraries.

// asymCase is one request a key-pair scheme checks, and what it should
// say: "" passes.
type asymCase struct {
	name string
	h    http.Header
	body string
	at   time.Time
	want string
}

// runAsym runs cases through CheckHeaders and Verify: what CheckHeaders
// refuses, Verify refuses with the same words.
func runAsym(t *testing.T, v *Verifier, secrets []string, cases []asymCase) {
	t.Helper()
	for _, c := range cases {
		at := c.at
		if at.IsZero() {
			at = now
		}
		err := v.Verify(req(c.h), []byte(c.body), at)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: Verify = %v, want it to pass", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: Verify = %v, want an error saying %q", c.name, err, c.want)
		}
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Errorf("%s: error %T, want *Error", c.name, err)
			}
			for _, s := range secrets {
				if strings.Contains(err.Error(), s) {
					t.Errorf("%s: the error %q shows a key", c.name, err)
				}
			}
		}
		if hErr := v.CheckHeaders(req(c.h), at); hErr != nil && (err == nil || hErr.Error() != err.Error()) {
			t.Errorf("%s: CheckHeaders = %v but Verify = %v", c.name, hErr, err)
		}
	}
}

func ts(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

func without(h http.Header, name string) http.Header {
	h = h.Clone()
	h.Del(name)
	return h
}

func with(h http.Header, name, value string) http.Header {
	h = h.Clone()
	h.Set(name, value)
	return h
}

func newEd25519(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func discordSign(priv ed25519.PrivateKey, body string, at time.Time) http.Header {
	h := http.Header{}
	h.Set("X-Signature-Timestamp", ts(at))
	h.Set("X-Signature-Ed25519", hex.EncodeToString(ed25519.Sign(priv, []byte(ts(at)+body))))
	return h
}

func TestDiscord(t *testing.T) {
	old, _ := newEd25519(t)
	cur, curPriv := newEd25519(t)
	_, otherPriv := newEd25519(t)
	secrets := []string{hex.EncodeToString(old), strings.ToUpper(hex.EncodeToString(cur))}
	v := newVerifier(t, Config{Scheme: "discord", Secrets: secrets})
	body := `{"version":1,"application_id":"1","type":1,"event":{"type":"APPLICATION_AUTHORIZED"}}`
	good := discordSign(curPriv, body, now)
	runAsym(t, v, secrets, []asymCase{
		{"signed with the second key", good, body, now, ""},
		{"timestamp at the edge of the tolerance", discordSign(curPriv, body, now.Add(-5*time.Minute)), body, now, ""},
		{"tampered body", good, body + " ", now, "no signature in X-Signature-Ed25519 matches"},
		{"wrong key", discordSign(otherPriv, body, now), body, now, "no signature in X-Signature-Ed25519 matches"},
		{"timestamp not the signed one", with(good, "X-Signature-Timestamp", ts(now.Add(time.Second))), body, now, "no signature"},
		{"missing signature", without(good, "X-Signature-Ed25519"), body, now, "X-Signature-Ed25519 is missing"},
		{"missing timestamp", without(good, "X-Signature-Timestamp"), body, now, "X-Signature-Timestamp is missing"},
		{"signature not hex", with(good, "X-Signature-Ed25519", "zz"+good.Get("X-Signature-Ed25519")[2:]), body, now, "X-Signature-Ed25519 is malformed"},
		{"signature too short", with(good, "X-Signature-Ed25519", good.Get("X-Signature-Ed25519")[2:]), body, now, "X-Signature-Ed25519 is malformed"},
		{"timestamp not seconds", with(good, "X-Signature-Timestamp", "yesterday"), body, now, "X-Signature-Timestamp is malformed"},
		{"stale timestamp", discordSign(curPriv, body, now.Add(-6*time.Minute)), body, now, "outside the tolerance"},
		{"future timestamp", discordSign(curPriv, body, now.Add(6*time.Minute)), body, now, "in the future"},
	})
	if got := v.DefaultKey(); len(got) != 1 || got[0] != "body" {
		t.Errorf("DefaultKey = %q, want body", got)
	}
	if got := v.Headers(); len(got) != 2 {
		t.Errorf("Headers = %q, want the signature and the timestamp", got)
	}
}

// TestDiscordPing: a verified {"type":0} is Discord's PING of a webhook
// events URL, answered 204 with no body; anything else is a payload.
func TestDiscordPing(t *testing.T) {
	pub, priv := newEd25519(t)
	v := newVerifier(t, Config{Scheme: "discord", Secrets: []string{hex.EncodeToString(pub)}})
	for _, c := range []struct {
		body string
		ping bool
	}{
		{`{"version":1,"application_id":"1234560123453231555","type":0}`, true},
		{`{"type":0}`, true},
		{`{"version":1,"application_id":"1","type":1,"event":{"type":"ENTITLEMENT_CREATE"}}`, false},
		{`{"type":1}`, false}, // an interactions endpoint's PING: not answered
		{`{"type":"0"}`, false},
		{`{"type":null}`, false},
		{`{"kind":0}`, false},
		{`[{"type":0}]`, false},
		{`not json`, false},
	} {
		r := req(discordSign(priv, c.body, now))
		if err := v.Verify(r, []byte(c.body), now); err != nil {
			t.Fatalf("%s: Verify: %v", c.body, err)
		}
		a, err := v.Handshake(r, []byte(c.body))
		switch {
		case err != nil:
			t.Errorf("%s: Handshake error %v", c.body, err)
		case c.ping && (a == nil || a.Status != http.StatusNoContent || len(a.Body) != 0 || a.ContentType != ""):
			t.Errorf("%s: Handshake = %+v, want 204 with no body", c.body, a)
		case !c.ping && a != nil:
			t.Errorf("%s: Handshake = %+v, want nil (a payload)", c.body, a)
		}
	}
}

func TestDiscordKeyErrors(t *testing.T) {
	pub, _ := newEd25519(t)
	for _, c := range []struct{ secret, want string }{
		{"not-hex-" + hex.EncodeToString(pub)[8:], "key #1: not hex"},
		{hex.EncodeToString(pub)[:62], "key #1: 31 bytes, but an Ed25519 public key is 32"},
		{hex.EncodeToString(append(pub, 0)), "key #1: 33 bytes"},
	} {
		_, err := New(Config{Scheme: "discord", Secrets: []string{c.secret}}, func(s string) (string, error) { return s, nil })
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("key %q: New = %v, want %q", c.secret, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), c.secret) {
			t.Errorf("the error %q shows the key", err)
		}
	}
}

func sendgridSign(t *testing.T, priv *ecdsa.PrivateKey, body string, at time.Time) http.Header {
	t.Helper()
	d := sha256.Sum256([]byte(ts(at) + body))
	sig, err := ecdsa.SignASN1(rand.Reader, priv, d[:])
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("X-Twilio-Email-Event-Webhook-Timestamp", ts(at))
	h.Set("X-Twilio-Email-Event-Webhook-Signature", base64.StdEncoding.EncodeToString(sig))
	return h
}

func newP256(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return priv, base64.StdEncoding.EncodeToString(der)
}

func TestSendGrid(t *testing.T) {
	_, old := newP256(t)
	curPriv, cur := newP256(t)
	otherPriv, _ := newP256(t)
	secrets := []string{old, cur}
	v := newVerifier(t, Config{Scheme: "sendgrid", Secrets: secrets})
	body := `[{"email":"a@example.com","event":"delivered","sg_event_id":"ZGVsaXZlcmVk","timestamp":1790000000}]`
	const sigH, tsH = "X-Twilio-Email-Event-Webhook-Signature", "X-Twilio-Email-Event-Webhook-Timestamp"
	good := sendgridSign(t, curPriv, body, now)
	runAsym(t, v, secrets, []asymCase{
		{"signed with the second key", good, body, now, ""},
		{"tampered body", good, strings.Replace(body, "delivered", "bounce", 1), now, "no signature in " + sigH + " matches"},
		{"wrong key", sendgridSign(t, otherPriv, body, now), body, now, "no signature in " + sigH + " matches"},
		{"timestamp not the signed one", with(good, tsH, ts(now.Add(time.Second))), body, now, "no signature"},
		{"missing signature", without(good, sigH), body, now, sigH + " is missing"},
		{"missing timestamp", without(good, tsH), body, now, tsH + " is missing"},
		{"signature not base64", with(good, sigH, "%%%"), body, now, sigH + " is malformed"},
		{"signature not DER", with(good, sigH, base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))), body, now, sigH + " is malformed"},
		{"signature with trailing bytes", with(good, sigH, base64.StdEncoding.EncodeToString(append(sig(good.Get(sigH)), 0))), body, now, sigH + " is malformed"},
		{"stale timestamp", sendgridSign(t, curPriv, body, now.Add(-time.Hour)), body, now, "outside the tolerance"},
	})
}

func sig(b64 string) []byte {
	b, _ := base64.StdEncoding.DecodeString(b64)
	return b
}

func TestSendGridKeyErrors(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	for _, c := range []struct{ secret, want string }{
		{"MFkwEwYHKoZIzj0C!!!", "key #1: not base64"},
		{base64.StdEncoding.EncodeToString([]byte("not a key at all")), "key #1: not a public key"},
		{base64.StdEncoding.EncodeToString(rsaDER), "key #1: a public key, but not ECDSA P-256"},
		{base64.StdEncoding.EncodeToString(p384DER), "key #1: a public key, but not ECDSA P-256"},
	} {
		_, err := New(Config{Scheme: "sendgrid", Secrets: []string{c.secret}}, func(s string) (string, error) { return s, nil })
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New = %v, want %q", err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), c.secret) {
			t.Errorf("the error %q shows the key", err)
		}
	}
}

// jwksServer serves a JSON Web Key Set on 127.0.0.1:0, counting the
// fetches; keys and status can change while it runs.
type jwksServer struct {
	*httptest.Server
	hits   atomic.Int64
	mu     sync.Mutex
	keys   []ed25519.PublicKey
	status int
	body   []byte // served as is when set
}

func newJWKSServer(t *testing.T, keys ...ed25519.PublicKey) *jwksServer {
	s := &jwksServer{keys: keys, status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.status != http.StatusOK {
			w.WriteHeader(s.status)
			return
		}
		if s.body != nil {
			w.Write(s.body)
			return
		}
		w.Write(jwksJSON(s.keys...))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) serve(keys ...ed25519.PublicKey) {
	s.mu.Lock()
	s.keys, s.status, s.body = keys, http.StatusOK, nil
	s.mu.Unlock()
}

func (s *jwksServer) fail(status int) {
	s.mu.Lock()
	s.status = status
	s.mu.Unlock()
}

// jwksJSON is a key set as fal publishes it, with a key of another kind
// that must be skipped.
func jwksJSON(keys ...ed25519.PublicKey) []byte {
	type jwk struct {
		Kty string `json:"kty"`
		Crv string `json:"crv,omitempty"`
		X   string `json:"x,omitempty"`
		Kid string `json:"kid,omitempty"`
	}
	set := struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{{Kty: "RSA", Kid: "other"}}}
	for i, k := range keys {
		set.Keys = append(set.Keys, jwk{"OKP", "Ed25519", base64.RawURLEncoding.EncodeToString(k), fmt.Sprint(i)})
	}
	b, _ := json.Marshal(set)
	return b
}

func falSign(priv ed25519.PrivateKey, id, body string, at time.Time) http.Header {
	sum := sha256.Sum256([]byte(body))
	msg := strings.Join([]string{id, "user-1", ts(at), hex.EncodeToString(sum[:])}, "\n")
	h := http.Header{}
	h.Set("X-Fal-Webhook-Request-Id", id)
	h.Set("X-Fal-Webhook-User-Id", "user-1")
	h.Set("X-Fal-Webhook-Timestamp", ts(at))
	h.Set("X-Fal-Webhook-Signature", hex.EncodeToString(ed25519.Sign(priv, []byte(msg))))
	return h
}

func newFal(t *testing.T, jwksURL string, opts ...Option) *Verifier {
	t.Helper()
	v, err := New(Config{Scheme: "fal", JWKS: jwksURL}, func(s string) (string, error) { return s, nil }, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestFal(t *testing.T) {
	pub, priv := newEd25519(t)
	srv := newJWKSServer(t, pub)
	v := newFal(t, srv.URL)
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("New fetched the keys (%d requests): they are fetched on the first request", n)
	}
	body := `{"request_id":"req-1","status":"OK","payload":{"images":[]}}`
	const sigH = "X-Fal-Webhook-Signature"
	good := falSign(priv, "req-1", body, now)
	runAsym(t, v, nil, []asymCase{
		{"valid", good, body, now, ""},
		{"tampered body", good, body + " ", now, "no signature in " + sigH + " matches fal's published keys"},
		{"request id not the signed one", with(good, "X-Fal-Webhook-Request-Id", "req-2"), body, now, "no signature"},
		{"user id not the signed one", with(good, "X-Fal-Webhook-User-Id", "user-2"), body, now, "no signature"},
		{"missing request id", without(good, "X-Fal-Webhook-Request-Id"), body, now, "X-Fal-Webhook-Request-Id is missing"},
		{"missing user id", without(good, "X-Fal-Webhook-User-Id"), body, now, "X-Fal-Webhook-User-Id is missing"},
		{"missing timestamp", without(good, "X-Fal-Webhook-Timestamp"), body, now, "X-Fal-Webhook-Timestamp is missing"},
		{"missing signature", without(good, sigH), body, now, sigH + " is missing"},
		{"signature not hex", with(good, sigH, strings.Repeat("g", 128)), body, now, sigH + " is malformed"},
		{"timestamp not seconds", with(good, "X-Fal-Webhook-Timestamp", "1.5"), body, now, "X-Fal-Webhook-Timestamp is malformed"},
		{"stale timestamp", falSign(priv, "req-1", body, now.Add(-301*time.Second)), body, now, "outside the tolerance"},
	})
	// the tampered body fetched the keys again once (it might have been a
	// rotation); the other failures, within the rate limit, did not
	if n := srv.hits.Load(); n != 2 {
		t.Errorf("the key set was fetched %d times, want 2 (the first request, one refresh on the first miss)", n)
	}
	if got := v.DefaultKey(); len(got) != 1 || got[0] != "header.X-Fal-Webhook-Request-Id" {
		t.Errorf("DefaultKey = %q", got)
	}
	if got := v.Headers(); len(got) != 4 {
		t.Errorf("Headers = %q, want fal's four", got)
	}
}

// TestFalKeyRotation: when fal serves a new key, the first request signed
// with it has the keys fetched again, and passes.
func TestFalKeyRotation(t *testing.T) {
	oldPub, oldPriv := newEd25519(t)
	newPub, newPriv := newEd25519(t)
	srv := newJWKSServer(t, oldPub)
	v := newFal(t, srv.URL)
	body := `{"status":"OK"}`
	if err := v.Verify(req(falSign(oldPriv, "a", body, now)), []byte(body), now); err != nil {
		t.Fatalf("signed with the served key: %v", err)
	}
	srv.serve(newPub)
	// right after the first fetch: the first fetch does not count against
	// the rate limit, so the rotation is seen at once
	at := now.Add(time.Second)
	if err := v.Verify(req(falSign(newPriv, "b", body, at)), []byte(body), at); err != nil {
		t.Fatalf("signed with the rotated key: %v", err)
	}
	if n := srv.hits.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
	if err := v.Verify(req(falSign(oldPriv, "c", body, at)), []byte(body), at); err == nil {
		t.Error("signed with the withdrawn key: passed")
	}
}

// TestFalForgedSignaturesRateLimited: forged signatures fetch the keys
// again at most once every 30s, whatever their number.
func TestFalForgedSignaturesRateLimited(t *testing.T) {
	pub, priv := newEd25519(t)
	_, forger := newEd25519(t)
	srv := newJWKSServer(t, pub)
	v := newFal(t, srv.URL)
	body := `{"status":"OK"}`
	if err := v.Verify(req(falSign(priv, "a", body, now)), []byte(body), now); err != nil {
		t.Fatal(err)
	}
	forge := func(at time.Time) {
		t.Helper()
		for i := range 20 {
			err := v.Verify(req(falSign(forger, fmt.Sprint("f", i), body, at)), []byte(body), at)
			if err == nil || err.(*Error).Status() != http.StatusUnauthorized {
				t.Fatalf("forged signature: %v, want 401", err)
			}
		}
	}
	forge(now)
	if n := srv.hits.Load(); n != 2 {
		t.Errorf("after 20 forged requests: %d fetches, want 2 (the first, one refresh)", n)
	}
	forge(now.Add(29 * time.Second))
	if n := srv.hits.Load(); n != 2 {
		t.Errorf("29s later: %d fetches, want still 2", n)
	}
	forge(now.Add(30 * time.Second))
	if n := srv.hits.Load(); n != 3 {
		t.Errorf("30s later: %d fetches, want 3", n)
	}
	// the valid key still passes, without a fetch
	at := now.Add(31 * time.Second)
	if err := v.Verify(req(falSign(priv, "b", body, at)), []byte(body), at); err != nil || srv.hits.Load() != 3 {
		t.Errorf("valid after the forgeries: %v, %d fetches", err, srv.hits.Load())
	}
}

// TestFalKeysUnavailable: with no key cached and the key set not to be
// had, a request is answered 503 (the sender retries), never passed,
// never a 401; the failure is logged once, and fetching resumes after the
// rate limit.
func TestFalKeysUnavailable(t *testing.T) {
	pub, priv := newEd25519(t)
	srv := newJWKSServer(t, pub)
	srv.fail(http.StatusBadGateway)
	core, logs := observer.New(zap.InfoLevel)
	v := newFal(t, srv.URL, WithLogger(zap.New(core)))
	body := `{"status":"OK"}`
	check := func(at time.Time, wantStatus int, wantHits int64) {
		t.Helper()
		err := v.Verify(req(falSign(priv, "a", body, at)), []byte(body), at)
		var ve *Error
		switch {
		case wantStatus == 0 && err != nil:
			t.Errorf("at +%s: %v, want a pass", at.Sub(now), err)
		case wantStatus != 0 && (!errors.As(err, &ve) || ve.Status() != wantStatus):
			t.Errorf("at +%s: %v, want status %d", at.Sub(now), err, wantStatus)
		}
		if n := srv.hits.Load(); n != wantHits {
			t.Errorf("at +%s: %d fetches, want %d", at.Sub(now), n, wantHits)
		}
	}
	check(now, http.StatusServiceUnavailable, 1)
	check(now.Add(10*time.Second), http.StatusServiceUnavailable, 1) // no fetch within 30s
	check(now.Add(30*time.Second), http.StatusServiceUnavailable, 2)
	if n := logs.FilterLevelExact(zap.ErrorLevel).Len(); n != 1 {
		t.Errorf("%d error lines for two failed fetches, want 1:\n%v", n, logs.All())
	}
	if l := logs.All(); len(l) > 0 && !strings.Contains(fmt.Sprint(l[0].ContextMap()["jwks"]), srv.URL) {
		t.Errorf("the log line %v does not name the key set", l[0])
	}
	srv.serve(pub)
	check(now.Add(60*time.Second), 0, 3)
	if n := logs.FilterMessageSnippet("again").Len(); n != 1 {
		t.Errorf("the recovery was logged %d times, want once", n)
	}

	// a server that is not there at all
	srv.Close()
	v = newFal(t, srv.URL)
	err := v.Verify(req(falSign(priv, "a", body, now)), []byte(body), now)
	if ve, ok := err.(*Error); !ok || ve.Status() != http.StatusServiceUnavailable {
		t.Errorf("key set unreachable: %v, want 503", err)
	}
}

// TestFalKeysKept: keys are used for a day, and fetched again after; a
// refresh that fails keeps the cached keys, and a miss then is 503 (it
// may be a rotation that cannot be seen).
func TestFalKeysKept(t *testing.T) {
	pub, priv := newEd25519(t)
	_, forger := newEd25519(t)
	srv := newJWKSServer(t, pub)
	v := newFal(t, srv.URL)
	body := `{"status":"OK"}`
	verify := func(p ed25519.PrivateKey, at time.Time) error {
		return v.Verify(req(falSign(p, "a", body, at)), []byte(body), at)
	}
	if err := verify(priv, now); err != nil {
		t.Fatal(err)
	}
	if err := verify(priv, now.Add(23*time.Hour)); err != nil || srv.hits.Load() != 1 {
		t.Fatalf("within a day: %v, %d fetches, want a pass with 1", err, srv.hits.Load())
	}
	srv.fail(http.StatusInternalServerError)
	if err := verify(priv, now.Add(24*time.Hour)); err != nil || srv.hits.Load() != 2 {
		t.Fatalf("a day later, key set failing: %v, %d fetches, want a pass with the cached key and 2 fetches", err, srv.hits.Load())
	}
	err := verify(forger, now.Add(24*time.Hour+time.Minute))
	if ve, ok := err.(*Error); !ok || ve.Status() != http.StatusServiceUnavailable || srv.hits.Load() != 3 {
		t.Errorf("a miss while the key set fails: %v, %d fetches, want 503 after a third fetch", err, srv.hits.Load())
	}
}

// TestFalBadKeySets: a key set that is too large, not JSON, or holds no
// Ed25519 key is a failed fetch: 503.
func TestFalBadKeySets(t *testing.T) {
	pub, priv := newEd25519(t)
	body := `{"status":"OK"}`
	for name, served := range map[string][]byte{
		"too large":     append(jwksJSON(pub)[:1], []byte(`"pad":"`+strings.Repeat("x", 1<<20)+`",`+string(jwksJSON(pub)[1:]))...),
		"not JSON":      []byte("<html>"),
		"no Ed25519":    []byte(`{"keys":[{"kty":"OKP","crv":"X25519","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}]}`),
		"short key":     []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + base64.RawURLEncoding.EncodeToString(pub[:31]) + `"}]}`),
		"not a sig key": []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","use":"enc","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}]}`),
	} {
		t.Run(name, func(t *testing.T) {
			srv := newJWKSServer(t)
			srv.body = served
			err := newFal(t, srv.URL).Verify(req(falSign(priv, "a", body, now)), []byte(body), now)
			if ve, ok := err.(*Error); !ok || ve.Status() != http.StatusServiceUnavailable {
				t.Errorf("%v, want 503", err)
			}
		})
	}
}

func TestFalConfig(t *testing.T) {
	resolve := func(s string) (string, error) {
		if s == "{env.EMPTY}" {
			return "", nil
		}
		return s, nil
	}
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Scheme: "fal", Secrets: []string{"s"}}, "verify fal: takes no secret"},
		{Config{Scheme: "fal", JWKS: "ftp://example.com/keys"}, "not an http or https URL"},
		{Config{Scheme: "fal", JWKS: "/keys.json"}, "not an http or https URL"},
		{Config{Scheme: "fal", JWKS: "{env.EMPTY}"}, "jwks resolves to empty"},
		{Config{Scheme: "discord", Secrets: []string{strings.Repeat("ab", 32)}, JWKS: "https://example.com/k"}, "verify discord: jwks is for verify fal only"},
		{Config{Scheme: "discord"}, "verify discord: no secret given"},
		{Config{Scheme: "sendgrid"}, "verify sendgrid: no secret given"},
	} {
		if _, err := New(c.cfg, resolve); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want %q", c.cfg, err, c.want)
		}
	}
	v, err := New(Config{Scheme: "fal"}, resolve)
	if err != nil || v.jwks.url != falJWKS {
		t.Errorf("verify fal with no jwks: %v, want fal's own key set", err)
	}
	if TakesSecrets("fal") || !TakesSecrets("discord") || !TakesSecrets("no such scheme") {
		t.Error("TakesSecrets: want false for fal only")
	}
}

// TestFalConcurrentFirstRequests: requests arriving together before any
// key is cached share one fetch.
func TestFalConcurrentFirstRequests(t *testing.T) {
	pub, priv := newEd25519(t)
	srv := newJWKSServer(t, pub)
	v := newFal(t, srv.URL)
	body := `{"status":"OK"}`
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			errs <- v.Verify(req(falSign(priv, fmt.Sprint("r", i), body, now)), []byte(body), now)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := srv.hits.Load(); n != 1 {
		t.Errorf("%d fetches for 20 requests arriving together, want 1", n)
	}
}
