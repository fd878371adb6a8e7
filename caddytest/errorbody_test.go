package caddytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAckErrorBodies: without handle_errors of its own, every error answer
// of the ack path carries {"status":"error","error":"..."} saying what was
// wrong, as JSON, never a secret or the name of the auth parameter, and
// keeps its headers (Allow, Retry-After). Another site on the same server
// with handle_errors, and a handle_errors for 404 only, leave them so,
// while still answering their own errors.
func TestAckErrorBodies(t *testing.T) {
	down := newUpstream(t, always(http.StatusServiceUnavailable))
	startCaddy(t, globalOptions+fmt.Sprintf(`
:%[1]d {
	webhook_relay /in {
		upstream %[2]s/hook
		name %[3]s
		auth_query key9 tok-s3cret
		max_body 1KiB
		max_backlog 1
		store memory
		backoff 10ms 50ms
	}
	webhook_relay /slow {
		upstream %[2]s/slow
		name %[4]s
		body_timeout 300ms
		store memory
	}
	error /missing 404
	handle_errors 404 {
		respond "our own 404"
	}
	respond 404
}

http://other.example:%[1]d {
	error 500
	handle_errors {
		respond "the other site's page"
	}
}`, relayPort, down.URL, relayName(t), relayName(t, "slow")))
	in := relayURL("/in", "key9=tok-s3cret")

	for _, tc := range []struct {
		name, method, url string
		body              []byte
		status            int
		says, header      string
	}{
		{"method", http.MethodGet, in, nil, 405, "POST", "Allow"},
		{"auth", http.MethodPost, relayURL("/in", "key9=wrong"), payload(t), 401, "auth query parameter", ""},
		{"no auth", http.MethodPost, relayURL("/in", ""), payload(t), 401, "auth query parameter", ""},
		{"malformed query", http.MethodPost, relayURL("/in", "key9=%zz"), payload(t), 401, "malformed", ""},
		{"size", http.MethodPost, in, bytes.Repeat([]byte(" "), 2048), 413, "max_body", ""},
		{"json", http.MethodPost, in, []byte("{nope"), 400, "JSON", ""},
		{"accepted", http.MethodPost, in, payload(t), 200, "", ""},
		{"backlog", http.MethodPost, in, payload(t), 503, "backlog full", "Retry-After"},
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
			if tc.status == http.StatusOK {
				expectStatus(t, a, http.StatusOK, "accepted")
				return
			}
			expectErrorBody(t, a, tc.status, tc.says)
			if tc.header != "" && a.header.Get(tc.header) == "" {
				t.Errorf("no %s header on the %d; headers %v", tc.header, tc.status, a.header)
			}
		})
	}

	t.Run("body timeout", func(t *testing.T) {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", relayPort))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte(badRequestHead("/slow", 100) + `{"a":1}`)); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(waitTimeout))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer to a stalled body: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		expectErrorBody(t, answer{status: resp.StatusCode, header: resp.Header, body: string(b)}, http.StatusRequestTimeout, "body_timeout")
	})

	t.Run("handle_errors 404 still answers its 404", func(t *testing.T) {
		a, err := send(http.MethodGet, relayURL("/missing", ""), nil)
		if err != nil {
			t.Fatal(err)
		}
		if a.status != http.StatusNotFound || a.body != "our own 404" {
			t.Errorf("GET /missing: %d %q, want 404 from handle_errors", a.status, a.body)
		}
	})

	t.Run("the other site's handle_errors still answers", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, relayURL("/in", "key9=wrong"), bytes.NewReader(payload(t)))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "other.example"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusInternalServerError || string(b) != "the other site's page" {
			t.Errorf("other.example: %d %q, want its handle_errors page", resp.StatusCode, b)
		}
	})
}

// expectErrorBody checks an error answer: status, Content-Type JSON, a
// body of exactly {"status":"error","error":"..."} whose error mentions
// says, and no secret in it.
func expectErrorBody(t *testing.T, a answer, status int, says string) {
	t.Helper()
	if a.status != status {
		t.Fatalf("status %d, want %d (body %q)", a.status, status, a.body)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json (body %q)", ct, a.body)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(a.body), &got); err != nil {
		t.Fatalf("body %q is not a JSON object of strings: %v", a.body, err)
	}
	if len(got) != 2 || got["status"] != "error" || got["error"] == "" {
		t.Errorf(`body %q, want {"status":"error","error":"..."}`, a.body)
	}
	if !strings.Contains(got["error"], says) {
		t.Errorf("error %q does not say %q", got["error"], says)
	}
	for _, secret := range []string{"s3cret", "key9"} {
		if strings.Contains(a.body, secret) {
			t.Errorf("body %q shows %q", a.body, secret)
		}
	}
}
