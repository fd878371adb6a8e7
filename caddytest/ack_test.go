package caddytest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"unicode"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// TestAck walks the ack path's table (README, "Responses") through a
// real Caddy, one subtest per row. Four relays share the config:
//
//	/ack    auth_query token with two secrets (rotation)
//	/both   two auth parameters, both required
//	/small  max_body 1KiB
//	/full   max_backlog 2 in front of an upstream that always answers 503
func TestAck(t *testing.T) {
	up := newUpstream(t, barrierResponder(always(http.StatusOK)))
	var downOK atomic.Bool // the /full upstream answers 503 until set
	down := newUpstream(t, func(*hit) reply {
		if downOK.Load() {
			return reply{status: http.StatusOK}
		}
		return reply{status: http.StatusServiceUnavailable}
	})
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /ack {
		upstream %[1]s/ack
		name %[3]s
		auth_query token secret-one secret-two
		store memory
		backoff 10ms 50ms
	}
	webhook_relay /both {
		upstream %[1]s/both
		name %[4]s
		auth_query token tok
		auth_query sig sig-value
		store memory
		backoff 10ms 50ms
	}
	webhook_relay /small {
		upstream %[1]s/small
		name %[5]s
		max_body 1KiB
		store memory
		backoff 10ms 50ms
	}
	webhook_relay /full {
		upstream %[2]s/full
		name %[6]s
		max_backlog 2
		store memory
		backoff 10ms 50ms
	}`, up.URL, down.URL, relayName(t, "ack"), relayName(t, "both"), relayName(t, "small"), relayName(t, "full"))))

	ack := relayURL("/ack", "token=secret-one")
	var accepted [][]byte // bodies the /ack relay answered "accepted" for

	t.Run("GET is 405 with Allow POST", func(t *testing.T) {
		for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete} {
			var body io.Reader
			if method == http.MethodPut {
				body = bytes.NewReader(payload(t))
			}
			a, err := send(method, ack, body)
			if err != nil {
				t.Fatal(err)
			}
			if a.status != http.StatusMethodNotAllowed {
				t.Errorf("%s: status %d, want 405", method, a.status)
			}
			if allow := a.header.Get("Allow"); allow != "POST" {
				t.Errorf("%s: Allow %q, want POST", method, allow)
			}
		}
	})

	t.Run("missing token is 401", func(t *testing.T) {
		expectStatus(t, post(t, relayURL("/ack", ""), payload(t)), http.StatusUnauthorized, "")
		expectStatus(t, post(t, relayURL("/ack", "other=secret-one"), payload(t)), http.StatusUnauthorized, "")
	})

	t.Run("wrong token is 401", func(t *testing.T) {
		for _, q := range []string{"token=wrong", "token=", "token=secret-one-and-more", "token=secret-on", "TOKEN=secret-one"} {
			a := post(t, relayURL("/ack", q), payload(t))
			if a.status != http.StatusUnauthorized {
				t.Errorf("?%s: status %d, want 401", q, a.status)
			}
		}
	})

	t.Run("token given twice is 401", func(t *testing.T) {
		for _, q := range []string{"token=secret-one&token=secret-one", "token=secret-one&token=secret-two", "token=wrong&token=secret-one"} {
			a := post(t, relayURL("/ack", q), payload(t))
			if a.status != http.StatusUnauthorized {
				t.Errorf("?%s: status %d, want 401", q, a.status)
			}
		}
	})

	t.Run("second rotated secret is accepted", func(t *testing.T) {
		body := payload(t)
		mustAccept(t, relayURL("/ack", "token=secret-two"), body)
		accepted = append(accepted, body)
	})

	t.Run("two auth params are both required", func(t *testing.T) {
		for _, q := range []string{"token=tok", "sig=sig-value", "token=tok&sig=wrong", "token=wrong&sig=sig-value", "token=sig-value&sig=tok", ""} {
			a := post(t, relayURL("/both", q), payload(t))
			if a.status != http.StatusUnauthorized {
				t.Errorf("?%s: status %d, want 401", q, a.status)
			}
		}
		body := payload(t)
		mustAccept(t, relayURL("/both", "sig=sig-value&token=tok"), body)
		up.waitDelivered(t, body)
	})

	big := append(payload(t, `"pad":"`+strings.Repeat("x", 2048)+`"`), '\n')
	t.Run("oversized body with Content-Length is 413", func(t *testing.T) {
		expectStatus(t, post(t, relayURL("/small", ""), big), http.StatusRequestEntityTooLarge, "")
	})

	t.Run("oversized chunked body is 413", func(t *testing.T) {
		a, err := send(http.MethodPost, relayURL("/small", ""), unknownLength(big))
		if err != nil {
			t.Fatal(err)
		}
		expectStatus(t, a, http.StatusRequestEntityTooLarge, "")
	})

	t.Run("body of exactly max_body is accepted, chunked or not", func(t *testing.T) {
		for _, chunked := range []bool{false, true} {
			body := exactly(t, 1024)
			var r io.Reader = bytes.NewReader(body)
			if chunked {
				r = unknownLength(body)
			}
			a, err := send(http.MethodPost, relayURL("/small", ""), r)
			if err != nil {
				t.Fatal(err)
			}
			expectStatus(t, a, http.StatusOK, "accepted")
			expectStatus(t, post(t, relayURL("/small", ""), append(exactly(t, 1024), ' ')), http.StatusRequestEntityTooLarge, "")
		}
	})

	t.Run("malformed JSON is 400", func(t *testing.T) {
		for _, body := range []string{`{"taskUUID":`, `not json`, `{"a":1}}`, `{"a":1} {"b":2}`, `{'a':1}`} {
			a := post(t, ack, []byte(body))
			if a.status != http.StatusBadRequest {
				t.Errorf("body %q: status %d, want 400", body, a.status)
			}
		}
	})

	t.Run("empty body is 400", func(t *testing.T) {
		expectStatus(t, post(t, ack, nil), http.StatusBadRequest, "")
		expectStatus(t, post(t, ack, []byte(" \n")), http.StatusBadRequest, "")
	})

	t.Run("deeply nested JSON is 400 without a crash", func(t *testing.T) {
		expectStatus(t, post(t, ack, bytes.Repeat([]byte("["), 100_000)), http.StatusBadRequest, "")
		expectStatus(t, post(t, ack, []byte(`{"data":`+strings.Repeat("[", 100_000))), http.StatusBadRequest, "")
		// still serving
		body := payload(t)
		mustAccept(t, ack, body)
		accepted = append(accepted, body)
	})

	t.Run("invalid UTF-8 in a JSON string is accepted with a key", func(t *testing.T) {
		body := []byte("{\"taskType\":\"imageInference\",\"taskUUID\":\"bad-\xff\xfe-utf8\",\"imageUUID\":\"\xc3\x28\"}")
		mustAccept(t, ack, body)
		accepted = append(accepted, body)
		hits := up.waitDelivered(t, body)
		key := hits[0].Key
		if key == "" || strings.ContainsFunc(key, func(r rune) bool { return r > unicode.MaxASCII || !unicode.IsPrint(r) || r == ' ' }) {
			t.Errorf("Idempotency-Key %q: want a non-empty printable ASCII key", key)
		}
		// the same bytes again are the same key
		expectStatus(t, post(t, ack, body), http.StatusOK, "duplicate")
	})

	body := payload(t)
	t.Run("new body is 200 accepted", func(t *testing.T) {
		expectStatus(t, post(t, ack, body), http.StatusOK, "accepted")
		accepted = append(accepted, body)
	})

	t.Run("same body again is 200 duplicate", func(t *testing.T) {
		expectStatus(t, post(t, ack, body), http.StatusOK, "duplicate")
		expectStatus(t, post(t, relayURL("/ack", "token=secret-two"), body), http.StatusOK, "duplicate")
	})

	t.Run("backlog full is 503 with Retry-After", func(t *testing.T) {
		full := relayURL("/full", "")
		first, second, third := payload(t), payload(t), payload(t)
		mustAccept(t, full, first)
		mustAccept(t, full, second)
		a := post(t, full, third)
		expectStatus(t, a, http.StatusServiceUnavailable, "")
		if ra := a.header.Get("Retry-After"); ra == "" {
			t.Errorf("503 without Retry-After; headers %v", a.header)
		}
		// a duplicate is still recognised while the backlog is full
		expectStatus(t, post(t, full, first), http.StatusOK, "duplicate")
		// the refused payload was not marked seen: once the upstream takes
		// the backlog, the sender's retry is accepted
		downOK.Store(true)
		down.waitDelivered(t, first)
		down.waitDelivered(t, second)
		// the relay removes a payload from the backlog a moment after the
		// upstream's 200: retry like a sender until there is room
		var a2 answer
		testkit.Eventually(t, waitTimeout, func() bool {
			a2 = post(t, full, third)
			return a2.status != http.StatusServiceUnavailable
		}, "waiting for room in the backlog")
		expectStatus(t, a2, http.StatusOK, "accepted")
		down.waitDelivered(t, third)
	})

	t.Run("only accepted payloads reach the upstream", func(t *testing.T) {
		for _, b := range accepted {
			up.waitDelivered(t, b)
		}
		barrier(t, up, ack)
		var got []*hit
		for _, h := range withPath(up.all(), "/ack") {
			if bytes.Contains(h.Body, []byte(`"barrier":true`)) {
				continue
			}
			got = append(got, h)
			if !slices.ContainsFunc(accepted, func(b []byte) bool { return bytes.Equal(b, h.Body) }) {
				t.Errorf("upstream got a payload the relay did not accept: %s body=%.80s", h, h.Body)
			}
		}
		if n := len(got); n != len(accepted) {
			t.Errorf("upstream got %d requests on /ack, want %d (one per accepted payload):\n%s", n, len(accepted), describe(up.all()))
		}
	})
}

// unknownLength hides the length of b, so that the client sends it chunked.
func unknownLength(b []byte) io.Reader { return io.MultiReader(bytes.NewReader(b)) }

// exactly returns a fresh JSON payload of n bytes.
func exactly(t *testing.T, n int) []byte {
	t.Helper()
	b := payload(t, `"pad":"`)
	b = b[:len(b)-1] // drop the closing brace
	pad := n - len(b) - len(`"}`)
	if pad < 0 {
		t.Fatalf("payload longer than %d bytes", n)
	}
	return append(append(b, strings.Repeat("x", pad)...), `"}`...)
}

func withPath(hits []*hit, path string) []*hit {
	var out []*hit
	for _, h := range hits {
		if h.Path == path {
			out = append(out, h)
		}
	}
	return out
}

// TestAckErrorsReachHandleErrors: the ack path fails through
// caddyhttp.Error, so a handle_errors block sees the status and a message
// that says what was wrong (and never a secret), and the headers the relay
// set (Allow, Retry-After) survive.
func TestAckErrorsReachHandleErrors(t *testing.T) {
	down := newUpstream(t, always(http.StatusServiceUnavailable))
	startCaddy(t, globalOptions+fmt.Sprintf(`
:%d {
	webhook_relay /in {
		upstream %s/hook
		name %s
		auth_query token tok-s3cret
		max_body 1KiB
		max_backlog 1
		store memory
		backoff 10ms 50ms
	}
	handle_errors {
		respond "{err.status_code} [{http.webhook_relay.outcome}] {err.message}"
	}
}`, relayPort, down.URL, relayName(t)))
	in := relayURL("/in", "token=tok-s3cret")

	for _, tc := range []struct {
		name, method, url string
		body              []byte
		status            int
		outcome           string
		mention, header   string
	}{
		{"method", http.MethodGet, in, nil, 405, "method_not_allowed", "POST", "Allow"},
		{"auth", http.MethodPost, relayURL("/in", "token=wrong"), payload(t), 401, "unauthorized", "token", ""},
		{"size", http.MethodPost, in, bytes.Repeat([]byte(" "), 2048), 413, "too_large", "max_body", ""},
		{"json", http.MethodPost, in, []byte("{nope"), 400, "bad_request", "JSON", ""},
		{"accepted", http.MethodPost, in, payload(t), 200, "", "", ""},
		{"backlog", http.MethodPost, in, payload(t), 503, "unavailable", "backlog", "Retry-After"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != nil {
				body = bytes.NewReader(tc.body)
			}
			a, err := send(tc.method, tc.url, body)
			if err != nil {
				t.Fatal(err)
			}
			if a.status != tc.status {
				t.Fatalf("status %d, want %d (body %q)", a.status, tc.status, a.body)
			}
			if tc.status == http.StatusOK {
				return
			}
			if want := fmt.Sprintf("%d [%s] ", tc.status, tc.outcome); !strings.HasPrefix(a.body, want) {
				t.Errorf("handle_errors answered %q, want it to start with %q", a.body, want)
			}
			if !strings.Contains(a.body, tc.mention) {
				t.Errorf("error message %q does not mention %q", a.body, tc.mention)
			}
			if strings.Contains(a.body, "s3cret") {
				t.Errorf("error message %q shows the secret", a.body)
			}
			if tc.header != "" && a.header.Get(tc.header) == "" {
				t.Errorf("no %s header on the %d from handle_errors; headers %v", tc.header, tc.status, a.header)
			}
		})
	}
}
