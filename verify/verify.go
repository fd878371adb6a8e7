// Package verify checks a webhook sender's signature on the raw request, the
// way each sender documents it (Standard Webhooks, Svix, Stripe, GitHub,
// Shopify, Slack, Paddle, Linear, Zoom, Meta, X, ElevenLabs, Twilio with an
// HMAC; Discord and fal with Ed25519, SendGrid with ECDSA; GitLab's token;
// OpenAI and Replicate as Standard Webhooks, Clerk and Resend as Svix), or a
// generic HMAC of the body, and answers the URL handshakes of the senders
// that make one (Slack, Zoom, Meta, X, Discord).
//
// A check never reveals an expected value: its errors say what was wrong
// with the request (a header missing or malformed, a timestamp outside the
// tolerance, no signature matching), and compare in constant time.
package verify

import (
	"cmp"
	"crypto"
	"crypto/hmac"
	"fmt"
	"hash"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Config is the JSON form of a relay's `verify`.
type Config struct {
	// Scheme is one of standard_webhooks, svix, stripe, github, shopify,
	// slack, paddle, linear, zoom, meta, twitter, elevenlabs, gitlab,
	// twilio, discord, sendgrid, fal, openai and replicate (Standard
	// Webhooks), clerk and resend (Svix), or hmac.
	Scheme string `json:"scheme"`
	// Secrets are the signing secrets, usually placeholders such as
	// {env.STRIPE_WEBHOOK_SECRET}; a request passes when it was signed
	// with any of them, so a secret can be rotated. For discord, the
	// application's public key as the Developer Portal shows it (64 hex
	// digits); for sendgrid, the verification key as SendGrid shows it
	// (base64). fal takes none: it signs with keys it publishes (JWKS).
	Secrets []string `json:"secrets,omitempty"`
	// Tolerance is how far a signed timestamp may be from now, for the
	// schemes that sign one. Default: the provider's own.
	Tolerance caddy.Duration `json:"tolerance,omitempty"`

	// Header, Algorithm, Encoding and Prefix set up the hmac scheme: the
	// header carrying the signature, sha256 (default), sha512 or sha1, hex
	// (default) or base64, and text stripped from the header's value
	// before it is decoded (e.g. "sha256=").
	Header    string `json:"header,omitempty"`
	Algorithm string `json:"algorithm,omitempty"`
	Encoding  string `json:"encoding,omitempty"`
	Prefix    string `json:"prefix,omitempty"`

	// VerifyToken is the token Meta's subscription handshake (a GET with
	// hub.verify_token) must carry, for verify meta; usually a
	// placeholder such as {env.META_VERIFY_TOKEN}.
	VerifyToken string `json:"verify_token,omitempty"`
	// BaseURL replaces the scheme and host of the URL Twilio signed, for
	// verify twilio behind another proxy: "https://example.com" (with a
	// port where Twilio was given one). Default: the request's own.
	BaseURL string `json:"base_url,omitempty"`
	// JWKS is the address of the key set fal signs with, for verify fal:
	// an http or https URL, or a placeholder. The keys are fetched on the
	// first request, cached, and fetched again when a signature matches
	// none of them (at most once every 30s) or they are a day old.
	// Default: https://rest.alpha.fal.ai/.well-known/jwks.json.
	JWKS string `json:"jwks,omitempty"`
}

// Verifier checks the requests of one sender.
type Verifier struct {
	scheme    *scheme
	keys      [][]byte // the decoded secrets
	tolerance time.Duration
	newHash   func() hash.Hash
	hmac      *hmacParams // the hmac scheme's settings; nil otherwise
	// pubKeys are the decoded public keys of the schemes that sign with
	// a key pair (ed25519.PublicKey, *ecdsa.PublicKey); keys is empty then.
	pubKeys []crypto.PublicKey
	jwks    *jwks // fal's published keys; nil for the other schemes
	logger  *zap.Logger

	verifyToken *[32]byte // SHA-256 of Meta's verify_token; nil: none set
	baseURL     *url.URL  // Twilio's base_url: scheme and host; nil: the request's
	answersGET  bool      // the scheme's GET handshake is answered
}

// Option sets up a Verifier beyond its Config.
type Option func(*Verifier)

// WithLogger gives the verifier a logger, for what goes wrong outside a
// request's own check (fal's keys cannot be fetched). Default: none.
func WithLogger(l *zap.Logger) Option {
	return func(v *Verifier) {
		if l != nil {
			v.logger = l
		}
	}
}

// Error says why a request failed the check, for the sender's operator. It
// holds no secret and no expected signature.
type Error struct {
	msg    string
	status int // 0: 401
}

func (e *Error) Error() string { return e.msg }

// Status is the HTTP status to answer: 401 for a failed check, 400 or 403
// for a refused handshake, 503 when the keys to check with cannot be had
// now (the sender retries).
func (e *Error) Status() int {
	if e.status == 0 {
		return http.StatusUnauthorized
	}
	return e.status
}

// failf is a failed check: 401.
func failf(format string, args ...any) error { return &Error{msg: fmt.Sprintf(format, args...)} }

// refusef is a refusal with another status than 401.
func refusef(status int, format string, args ...any) error {
	return &Error{msg: fmt.Sprintf(format, args...), status: status}
}

// New builds the verifier cfg describes. resolve turns a configured secret
// into its value (placeholders); a secret that resolves to empty, or that
// does not have the scheme's format, is an error naming the secret by its
// position, never by its value.
func New(cfg Config, resolve func(string) (string, error), opts ...Option) (*Verifier, error) {
	s, ok := schemes[cfg.Scheme]
	if !ok {
		return nil, fmt.Errorf("verify: unknown scheme %q: use one of %s", cfg.Scheme, strings.Join(SchemeNames(), ", "))
	}
	if cfg.Tolerance < 0 {
		return nil, fmt.Errorf("verify %s: tolerance must not be negative", cfg.Scheme)
	}
	if cfg.Tolerance != 0 && s.tolerance == 0 {
		return nil, fmt.Errorf("verify %s: the scheme signs no timestamp, so tolerance does not apply", cfg.Scheme)
	}
	v := &Verifier{scheme: s, tolerance: cmp.Or(time.Duration(cfg.Tolerance), s.tolerance), newHash: sha256New, logger: zap.NewNop()}
	for _, o := range opts {
		o(v)
	}
	if s.name == "hmac" {
		p, newHash, err := newHMACParams(cfg)
		if err != nil {
			return nil, err
		}
		v.hmac, v.newHash = p, newHash
	} else if cfg.Header != "" || cfg.Algorithm != "" || cfg.Encoding != "" || cfg.Prefix != "" {
		return nil, fmt.Errorf("verify %s: header, algorithm, encoding and prefix are for verify hmac only", cfg.Scheme)
	}
	if err := checkOptionOwners(cfg); err != nil {
		return nil, err
	}
	v.answersGET = s.get != nil
	if s.setup != nil {
		if err := s.setup(v, cfg, resolve); err != nil {
			return nil, err
		}
	}
	switch {
	case s.noSecret && len(cfg.Secrets) > 0:
		return nil, fmt.Errorf("verify %s: takes no secret: it checks with the keys the sender publishes", cfg.Scheme)
	case !s.noSecret && len(cfg.Secrets) == 0:
		return nil, fmt.Errorf("verify %s: no secret given", cfg.Scheme)
	}
	for i, raw := range cfg.Secrets {
		secret, err := resolve(raw)
		if err != nil || secret == "" {
			return nil, fmt.Errorf("verify %s: secret #%d resolves to empty or has an empty placeholder; set it", cfg.Scheme, i+1)
		}
		if s.publicKey != nil {
			key, err := s.publicKey(secret)
			if err != nil {
				return nil, fmt.Errorf("verify %s: key #%d: %v", cfg.Scheme, i+1, err)
			}
			v.pubKeys = append(v.pubKeys, key)
			continue
		}
		key, err := s.key(secret)
		if err != nil {
			return nil, fmt.Errorf("verify %s: secret #%d: %v", cfg.Scheme, i+1, err)
		}
		v.keys = append(v.keys, key)
	}
	return v, nil
}

// Verify checks r's signature over body, the raw bytes as received, at now.
// It reads r's headers and, for the schemes that sign it, the URL the
// sender called; never r.Body. A failure is an *Error.
func (v *Verifier) Verify(r *http.Request, body []byte, now time.Time) error {
	s, err := v.scheme.parse(v, r.Header, now)
	if err != nil {
		return err
	}
	if v.scheme.check != nil {
		if err := v.scheme.check(v, s, r, body); err != nil {
			return err
		}
	} else if !v.matches(s.sigs, append(s.before, body)...) {
		return errNoMatch(s.header)
	}
	if v.scheme.after != nil {
		return v.scheme.after(v, body, now)
	}
	return nil
}

// CheckHeaders checks what the signature headers show without the body:
// present, well formed, and a signed timestamp within the tolerance of now.
// A request that fails it would fail Verify too, so its body need not be
// read. A failure is an *Error.
func (v *Verifier) CheckHeaders(r *http.Request, now time.Time) error {
	_, err := v.scheme.parse(v, r.Header, now)
	return err
}

// DefaultKey are the dedupe key sources of the scheme: its delivery or
// event id where the signature covers one (e.g. "header.webhook-id"), else
// signed content that the sender's retries repeat; none for hmac.
func (v *Verifier) DefaultKey() []string { return slices.Clone(v.scheme.defaultKey) }

// Tolerance is how far a signed timestamp may be from now; 0 for the
// schemes that sign none.
func (v *Verifier) Tolerance() time.Duration { return v.tolerance }

// Headers are the incoming headers the scheme's own verification reads
// (signature, timestamp, id, event type), to be stored with the payload and
// forwarded, so an app that verifies them itself keeps working.
func (v *Verifier) Headers() []string {
	if v.hmac != nil {
		return []string{v.hmac.header}
	}
	return slices.Clone(v.scheme.headers)
}

// Scheme is the scheme's name.
func (v *Verifier) Scheme() string { return v.scheme.name }

// matches reports whether any signature equals the MAC of the signed parts
// under any key, comparing each pair in constant time.
func (v *Verifier) matches(signatures [][]byte, parts ...[]byte) bool {
	for _, key := range v.keys {
		m := hmac.New(v.newHash, key)
		for _, p := range parts {
			m.Write(p)
		}
		sum := m.Sum(nil)
		for _, sig := range signatures {
			if hmac.Equal(sum, sig) {
				return true
			}
		}
	}
	return false
}

// within fails unless the signed time ts is within the tolerance of now, in
// either direction. It compares times, not their difference: a Duration
// holds 292 years, now.Sub saturates beyond that, and negating the
// saturated minimum overflows back to a negative, which would pass.
func (v *Verifier) within(ts, now time.Time) error {
	switch {
	case ts.Before(now.Add(-v.tolerance)):
		return failf("the signed timestamp is %s old, outside the tolerance of %s (a replay, or the clocks disagree)", now.Sub(ts).Round(time.Second), v.tolerance)
	case ts.After(now.Add(v.tolerance)):
		return failf("the signed timestamp is %s in the future, outside the tolerance of %s (the clocks disagree)", ts.Sub(now).Round(time.Second), v.tolerance)
	}
	return nil
}

// errNoMatch is the failure of a well-formed request whose signatures were
// all wrong.
func errNoMatch(header string) error {
	return failf("no signature in %s matches the configured secret(s): a wrong or rotated secret, or a body changed on the way", header)
}
