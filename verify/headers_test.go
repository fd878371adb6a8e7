package verify

import (
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestCheckHeaders: before the body arrives, each scheme refuses what its
// headers alone show to be wrong (missing, malformed, a signed time out of
// tolerance) and passes headers that look right whatever the body turns
// out to be. What it refuses, Verify refuses too.
func TestCheckHeaders(t *testing.T) {
	type scheme struct {
		cfg       Config
		sign      signer
		sigH      string
		malformed string // a value of sigH that cannot be a signature
	}
	schemes := map[string]scheme{}
	for name, s := range signers {
		schemes[name] = scheme{Config{Scheme: name, Secrets: []string{s.secrets[0]}}, s.sign, s.sigH, "not a signature"}
	}
	schemes["hmac"] = scheme{
		Config{Scheme: "hmac", Secrets: []string{"k"}, Header: "X-Signature", Prefix: "sha256="},
		func(secret, body string, _ time.Time) http.Header {
			h := http.Header{}
			h.Set("X-Signature", "sha256="+hex.EncodeToString(mac(sha256New, []byte(secret), body)))
			return h
		}, "X-Signature", "sha256=zz",
	}
	for name, s := range schemes {
		t.Run(name, func(t *testing.T) {
			v := newVerifier(t, s.cfg)
			body := bodyAt(now)
			secret := s.cfg.Secrets[0]

			if err := v.CheckHeaders(req(s.sign(secret, body, now)), now); err != nil {
				t.Errorf("valid headers: %v", err)
			}
			// the body is not looked at: a wrong secret or another body
			// passes here and fails Verify later
			if err := v.CheckHeaders(req(s.sign("another secret", body, now)), now); err != nil {
				t.Errorf("well-formed headers with a wrong signature: %v, want nil (the body decides)", err)
			}

			refused := func(what string, h http.Header, want string) {
				t.Helper()
				err := v.CheckHeaders(req(h), now)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("%s: CheckHeaders = %v, want an error saying %q", what, err, want)
				}
				if _, ok := err.(*Error); err != nil && !ok {
					t.Errorf("%s: error %T, want *Error", what, err)
				}
				if err := v.Verify(req(h), []byte(body), now); err == nil {
					t.Errorf("%s: CheckHeaders refuses what Verify passes", what)
				}
			}

			h := s.sign(secret, body, now)
			h.Del(s.sigH)
			refused("no signature header", h, "missing")

			h = s.sign(secret, body, now)
			h.Set(s.sigH, s.malformed)
			refused("a malformed signature header", h, "malformed")

			old := now.Add(-time.Hour)
			h = s.sign(secret, bodyAt(old), old)
			switch {
			case name == "linear":
				// Linear's signed time is in the body: only Verify sees it
				if err := v.CheckHeaders(req(h), now); err != nil {
					t.Errorf("headers signed an hour ago: %v, want nil (the time is in the body)", err)
				}
				if err := v.Verify(req(h), []byte(bodyAt(old)), now); err == nil {
					t.Errorf("a body signed an hour ago passed Verify")
				}
			case v.scheme.tolerance > 0:
				refused("signed an hour ago", h, "outside the tolerance")
			default:
				if err := v.CheckHeaders(req(h), now); err != nil {
					t.Errorf("the scheme signs no time, yet: %v", err)
				}
			}
		})
	}
}

// TestCheckHeadersNamesEachMissingHeader: schemes with several headers say
// which one is missing.
func TestCheckHeadersNamesEachMissingHeader(t *testing.T) {
	for name, headers := range map[string][]string{
		"standard_webhooks": {"webhook-id", "webhook-timestamp", "webhook-signature"},
		"svix":              {"svix-id", "svix-timestamp", "svix-signature"},
		"slack":             {"X-Slack-Signature", "X-Slack-Request-Timestamp"},
	} {
		s := signers[name]
		v := newVerifier(t, Config{Scheme: name, Secrets: []string{s.secrets[0]}})
		for _, missing := range headers {
			h := s.sign(s.secrets[0], "{}", now)
			h.Del(missing)
			err := v.CheckHeaders(req(h), now)
			if err == nil || !strings.Contains(err.Error(), missing) {
				t.Errorf("%s without %s: %v, want an error naming it", name, missing, err)
			}
		}
	}
}
