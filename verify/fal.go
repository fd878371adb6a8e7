package verify

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// falJWKS is where fal publishes the keys it signs webhooks with.
const falJWKS = "https://rest.alpha.fal.ai/.well-known/jwks.json"

// fal is fal's webhook signature: X-Fal-Webhook-Signature, the hex Ed25519
// signature of X-Fal-Webhook-Request-Id, X-Fal-Webhook-User-Id,
// X-Fal-Webhook-Timestamp and the hex SHA-256 of the body, joined by
// newlines, under one of the keys fal publishes as a JSON Web Key Set.
// fal asks for a timestamp within five minutes.
var fal = &scheme{
	name:       "fal",
	defaultKey: []string{"header.X-Fal-Webhook-Request-Id"},
	headers:    []string{"X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id", "X-Fal-Webhook-Timestamp", "X-Fal-Webhook-Signature"},
	tolerance:  5 * time.Minute,
	noSecret:   true,
	setup:      setupFal,
	parse:      parseFal,
	check:      checkFal,
}

// setupFal reads where fal's keys are fetched from; they are fetched on
// the first request, not here.
func setupFal(v *Verifier, cfg Config, resolve func(string) (string, error)) error {
	addr := falJWKS
	if cfg.JWKS != "" {
		var err error
		if addr, err = resolve(cfg.JWKS); err != nil || addr == "" {
			return fmt.Errorf("verify fal: jwks resolves to empty or has an empty placeholder; set it")
		}
	}
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("verify fal: jwks %q is not an http or https URL", addr)
	}
	v.jwks = newJWKS(addr, v.logger)
	return nil
}

// parseFal reads fal's four headers; the signed message is completed with
// the body's hash in checkFal.
func parseFal(v *Verifier, h http.Header, now time.Time) (signed, error) {
	const idH, userH, tsH, sigH = "X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id", "X-Fal-Webhook-Timestamp", "X-Fal-Webhook-Signature"
	id, err := header(h, idH)
	if err != nil {
		return signed{}, err
	}
	user, err := header(h, userH)
	if err != nil {
		return signed{}, err
	}
	tsRaw, ts, err := headerTime(h, tsH)
	if err != nil {
		return signed{}, err
	}
	raw, err := header(h, sigH)
	if err != nil {
		return signed{}, err
	}
	sig, err := hex.DecodeString(strings.TrimSpace(raw))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return signed{}, failf("%s is malformed: want %d hex digits (an Ed25519 signature)", sigH, 2*ed25519.SignatureSize)
	}
	if err := v.within(ts, now); err != nil {
		return signed{}, err
	}
	nl := []byte("\n")
	return signed{sigs: [][]byte{sig}, header: sigH, at: now,
		before: [][]byte{[]byte(id), nl, []byte(user), nl, []byte(tsRaw), nl}}, nil
}

// checkFal checks the signature under fal's published keys. A signature
// that matches none of the cached keys has them fetched again (fal may
// have rotated its key), at most once every jwksMinInterval. When the keys
// cannot be had, the answer is 503, and the sender retries.
func checkFal(v *Verifier, s signed, r *http.Request, body []byte) error {
	sum := sha256.Sum256(body)
	msg := message(append(s.before, []byte(hex.EncodeToString(sum[:]))), nil)
	// a sender that hangs up must not cancel a fetch other requests wait on
	ctx := context.WithoutCancel(r.Context())
	var missed uint64
	for {
		keys, gen, err := v.jwks.get(ctx, s.at, missed)
		for _, key := range keys {
			if signedBy(key, s.sigs, msg) {
				return nil
			}
		}
		switch {
		case err != nil:
			// the address and the cause are logged, for the operator
			return refusef(http.StatusServiceUnavailable, "fal's signing keys cannot be fetched now, so the signature cannot be checked; retry later")
		case missed != 0 || gen == 0:
			// these keys were fetched again already, or cannot be yet
			return failf("no signature in %s matches fal's published keys: a forged request, or a body changed on the way", s.header)
		}
		missed = gen
	}
}
