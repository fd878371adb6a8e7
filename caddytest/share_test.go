package caddytest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawAnswer opens a connection, sends head (a request head announcing a
// body, and none of it), and returns the answer with its body, and how
// long it took. The answer must come before the body would have.
func rawAnswer(t *testing.T, head string) (*http.Response, string, time.Duration) {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", relayPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(start.Add(waitTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer before the body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, strings.TrimSpace(string(b)), time.Since(start)
}

// TestClientShareBehindTrustedProxy: a client's share of max_memory is
// counted by its address as Caddy sees it after trusted_proxies: a client
// past its share gets 503 with Retry-After, at once, while another client
// behind the same proxy is accepted.
func TestClientShareBehindTrustedProxy(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	options := strings.TrimSuffix(strings.TrimSpace(globalOptions), "}") + `
	servers {
		trusted_proxies static 127.0.0.1/32
	}
}
`
	name := relayName(t)
	startCaddy(t, options+fmt.Sprintf(`
:%d {
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		max_body 1MiB
		max_memory 8MiB
	}
}`, relayPort, up.URL, name))

	// 203.0.113.7 announces max_body (its whole share: max_memory/8)
	// and sends nothing
	staller := stallBodyTo(t, badRequestHead("/in", 1<<20, "X-Forwarded-For: 203.0.113.7"))
	opsWaitOverview(t, name, "the stalled body to hold 1 MiB", func(s *opsRelayStatus) bool { return s.MemoryBytes >= 1<<20 })

	resp, body, took := rawAnswer(t, badRequestHead("/in", 100, "X-Forwarded-For: 203.0.113.7"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "share of max_memory") {
		t.Errorf("the same client past its share: %d %s (Retry-After %q), want 503 saying so, with Retry-After",
			resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if took > time.Second {
		t.Errorf("the 503 took %s: it waited on the body it refused", took)
	}
	mustAccept(t, relayURL("/in", ""), payload(t), "X-Forwarded-For: 198.51.100.9")

	staller.Close()
	opsWaitOverview(t, name, "the memory to be given back", func(s *opsRelayStatus) bool { return s.MemoryBytes == 0 })
	mustAccept(t, relayURL("/in", ""), payload(t), "X-Forwarded-For: 203.0.113.7")
}

// TestVerifyHeadersBeforeTheBody: with verify, a request without a
// well-formed, current signature header is refused with 401 before its
// body arrives, holding no memory.
func TestVerifyHeadersBeforeTheBody(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	name := relayName(t)
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		verify stripe whsec_caddytest_share
	}`, up.URL, name)))
	for _, tc := range []struct{ name, header, says string }{
		{"none", "", "Stripe-Signature is missing"},
		{"malformed", "Stripe-Signature: v1=abc", "Stripe-Signature is malformed"},
		{"old", fmt.Sprintf("Stripe-Signature: t=%d,v1=%064x", time.Now().Add(-time.Hour).Unix(), 1), "outside the tolerance"},
	} {
		var extra []string
		if tc.header != "" {
			extra = append(extra, tc.header)
		}
		resp, body, took := rawAnswer(t, badRequestHead("/in", 1<<20, extra...))
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, tc.says) || !strings.HasPrefix(body, `{"status":"error"`) {
			t.Errorf("%s: %d %s, want 401 with a JSON error saying %q", tc.name, resp.StatusCode, body, tc.says)
		}
		if took > time.Second {
			t.Errorf("%s: the 401 took %s", tc.name, took)
		}
	}
	if s := opsOverview(t, name); s == nil || s.MemoryBytes != 0 {
		t.Errorf("memory held after requests refused on their headers: %+v", s)
	}
}

// stallBodyTo opens a connection and sends head, and nothing more.
func stallBodyTo(t *testing.T, head string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", relayPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	return conn
}
