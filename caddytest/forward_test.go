package caddytest

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestForwardShape checks the request the upstream gets (the README's
// Delivery section): the body byte-identical, the upstream's path and query
// plus the incoming query minus every auth parameter, the sender's
// Content-Type and User-Agent, X-Forwarded-For, an Idempotency-Key that
// stays the same across the retries of one payload, the attempt number
// counting 1, 2, 3, and the header_up headers, one of them from an env
// placeholder.
func TestForwardShape(t *testing.T) {
	t.Setenv("WEBHOOK_RELAY_TEST_UPSTREAM_TOKEN", "upstream-token-from-env")
	up := newUpstream(t, sequence(http.StatusServiceUnavailable, http.StatusServiceUnavailable, http.StatusOK))
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hooks/runware?src=relay&v=2
		name %s
		auth_query token tok-s3cret
		auth_query sig sig-s3cret
		header_up X-Relay-Static static-value
		header_up Authorization "Bearer {env.WEBHOOK_RELAY_TEST_UPSTREAM_TOKEN}"
		store memory
		backoff 10ms 50ms
	}`, up.URL, relayName(t))))

	const (
		contentType = "application/json; charset=utf-8"
		userAgent   = "Runware-Webhooks/1.0 (caddytest)"
	)
	secrets := []string{"tok-s3cret", "sig-s3cret", "token=", "sig="}

	// checkCommon checks what every forwarded request of a payload shares.
	checkCommon := func(t *testing.T, hits []*hit, body []byte, wantQuery string) {
		t.Helper()
		for _, h := range hits {
			if h.Method != http.MethodPost {
				t.Errorf("attempt %d: method %s, want POST", h.Attempt, h.Method)
			}
			if h.Path != "/hooks/runware" {
				t.Errorf("attempt %d: path %q, want /hooks/runware", h.Attempt, h.Path)
			}
			if h.RawQuery != wantQuery {
				t.Errorf("attempt %d: query %q, want %q", h.Attempt, h.RawQuery, wantQuery)
			}
			if !bytes.Equal(h.Body, body) {
				t.Errorf("attempt %d: body differs from what was sent:\n got %q\nwant %q", h.Attempt, h.Body, body)
			}
			if got := h.Header.Get("Content-Type"); got != contentType {
				t.Errorf("attempt %d: Content-Type %q, want %q", h.Attempt, got, contentType)
			}
			if got := h.Header.Get("User-Agent"); got != userAgent {
				t.Errorf("attempt %d: User-Agent %q, want %q", h.Attempt, got, userAgent)
			}
			if got := h.Header.Get("X-Forwarded-For"); !strings.Contains(got, "127.0.0.1") {
				t.Errorf("attempt %d: X-Forwarded-For %q, want it to contain 127.0.0.1", h.Attempt, got)
			}
			if got := h.Header.Get("X-Relay-Static"); got != "static-value" {
				t.Errorf("attempt %d: X-Relay-Static %q, want static-value (header_up)", h.Attempt, got)
			}
			if got := h.Header.Get("Authorization"); got != "Bearer upstream-token-from-env" {
				t.Errorf("attempt %d: Authorization %q, want the header_up value with {env.*} resolved", h.Attempt, got)
			}
			if h.Key == "" {
				t.Errorf("attempt %d: no Idempotency-Key", h.Attempt)
			}
			if h.Key != hits[0].Key {
				t.Errorf("attempt %d: Idempotency-Key %q, attempt 1 had %q: one payload, one key", h.Attempt, h.Key, hits[0].Key)
			}
			for _, s := range secrets {
				if strings.Contains(h.Path+"?"+h.RawQuery, s) {
					t.Errorf("attempt %d: URL %s?%s carries %q", h.Attempt, h.Path, h.RawQuery, s)
				}
				for name, values := range h.Header {
					for _, v := range values {
						if strings.Contains(v, s) {
							t.Errorf("attempt %d: header %s: %q carries %q", h.Attempt, name, v, s)
						}
					}
				}
			}
		}
	}

	t.Run("retried payload", func(t *testing.T) {
		body := testdata(t, "runware/22-image-wrapped-pretty.json")
		mustAccept(t, relayURL("/in", "token=tok-s3cret&a=1&sig=sig-s3cret&b=2"), body,
			"Content-Type: "+contentType, "User-Agent: "+userAgent)
		hits := up.waitDelivered(t, body)
		if len(hits) != 3 {
			t.Fatalf("%d requests for the payload, want 3 (503, 503, 200):\n%s", len(hits), describe(hits))
		}
		for i, h := range hits {
			if h.Attempt != i+1 {
				t.Errorf("request %d: %s %q, want %d", i+1, "X-Webhook-Relay-Attempt", h.Header.Get("X-Webhook-Relay-Attempt"), i+1)
			}
		}
		checkCommon(t, hits, body, "src=relay&v=2&a=1&b=2")
		if xff := hits[0].Header.Get("X-Forwarded-For"); xff != "127.0.0.1" {
			t.Errorf("X-Forwarded-For %q, want 127.0.0.1 (the client, no prior chain)", xff)
		}
	})

	t.Run("encoded query and an untrusted forwarding chain", func(t *testing.T) {
		body := payload(t)
		// t%6Fken is "token": the auth check decodes it, so stripping must too
		mustAccept(t, relayURL("/in", "x=%2F%20y&t%6Fken=tok-s3cret&sig=sig-s3cret&x=2"), body,
			"Content-Type: "+contentType, "User-Agent: "+userAgent, "X-Forwarded-For: 203.0.113.7")
		hits := up.waitDelivered(t, body)
		checkCommon(t, hits, body, "src=relay&v=2&x=%2F%20y&x=2")
		if xff := hits[0].Header.Get("X-Forwarded-For"); xff != "127.0.0.1" {
			t.Errorf("X-Forwarded-For %q, want 127.0.0.1: the sender is not a trusted proxy, so its chain is dropped", xff)
		}
	})
}

// TestForwardedForFromTrustedProxy: behind a proxy listed in the server's
// trusted_proxies, the incoming X-Forwarded-For chain is kept and the
// proxy's address added, as reverse_proxy does.
func TestForwardedForFromTrustedProxy(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	options := strings.TrimSuffix(strings.TrimSpace(globalOptions), "}") + `
	servers {
		trusted_proxies static 127.0.0.1/32
	}
}
`
	startCaddy(t, options+fmt.Sprintf(`
:%d {
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
	}
}`, relayPort, up.URL, relayName(t)))
	body := payload(t)
	mustAccept(t, relayURL("/in", ""), body, "X-Forwarded-For: 203.0.113.7")
	hits := up.waitDelivered(t, body)
	if xff := hits[0].Header.Get("X-Forwarded-For"); xff != "203.0.113.7, 127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want the trusted proxy's chain plus the proxy: 203.0.113.7, 127.0.0.1", xff)
	}
}
