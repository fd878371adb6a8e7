package caddytest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// boundsConfig is one relay on /big: max_body 1MiB within max_memory
// 1.5MiB, so that one large body being received leaves no room for a
// second, and the given extra settings.
func boundsConfig(t *testing.T, upstream, extra string) string {
	return site(fmt.Sprintf(`
	webhook_relay /big {
		upstream %s/big
		name %s
		store memory
		max_body 1MiB
		max_memory 1536KiB
		backoff 10ms 50ms
		%s
	}`, upstream, relayName(t), extra))
}

// stallBody opens a connection, announces a body of size bytes, sends the
// first sent of them and then nothing more. Closing the connection ends it.
func stallBody(t *testing.T, size, sent int) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", relayPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	head := badRequestHead("/big", size)
	if _, err := conn.Write(append([]byte(head), bytes.Repeat([]byte(" "), sent)...)); err != nil {
		t.Fatal(err)
	}
	return conn
}

// rawPost sends a POST of body to path on its own connection, writing
// while it reads the answer, and returns the answer's head.
func rawPost(t *testing.T, path string, body []byte) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", relayPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() { _, _ = conn.Write(append([]byte(badRequestHead(path, len(body))), body...)) }()
	_ = conn.SetReadDeadline(time.Now().Add(waitTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("POST %s: no answer: %v", path, err)
	}
	resp.Body.Close()
	return resp
}

// bigPayload is a JSON body of about n bytes with a distinct task.
func bigPayload(t *testing.T, n int) []byte {
	p := payload(t)
	return append(p[:len(p)-1], []byte(`,"pad":"`+strings.Repeat("x", n-len(p)-10)+`"}`)...)
}

// TestBoundsMaxMemory: bodies being received count against max_memory; a
// request that does not fit gets 503 with Retry-After, and is accepted once
// the memory is free again.
func TestBoundsMaxMemory(t *testing.T) {
	up := newUpstream(t, barrierResponder(always(http.StatusOK)))
	startCaddy(t, boundsConfig(t, up.URL, ""))
	name := relayName(t)
	s := opsOverview(t, name)
	if s == nil || s.MaxMemory != 1536<<10 {
		t.Fatalf("overview shows max_memory %+v, want %d", s, 1536<<10)
	}

	// one sender announces 1 MiB and stalls after 600 KiB: its buffer has
	// doubled to 1 MiB, past what arrived
	staller := stallBody(t, 1<<20, 600<<10)
	opsWaitOverview(t, name, "the stalled body to hold 1 MiB", func(s *opsRelayStatus) bool { return s.MemoryBytes >= 1<<20 })

	body := bigPayload(t, 1<<20-100)
	// written while the answer is read: the relay answers before it reads
	// the body, and an ordinary client may see its write cut off first
	resp := rawPost(t, "/big", body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a 1 MiB body while a stalled one holds all receiving may use of max_memory (and the client's share): status %d, Retry-After %q; want 503 with Retry-After",
			resp.StatusCode, resp.Header.Get("Retry-After"))
	}

	staller.Close()
	opsWaitOverview(t, name, "the memory to be given back", func(s *opsRelayStatus) bool { return s.MemoryBytes == 0 })
	mustAccept(t, relayURL("/big", ""), body)
	up.waitDelivered(t, body)
	opsWaitOverview(t, name, "no memory held after the delivery", func(s *opsRelayStatus) bool {
		return intOf(s.Backlog) == 0 && s.MemoryBytes == 0
	})
}

// TestBoundsBodyTimeout: a body that stops arriving gets 408 after
// body_timeout, and holds no memory afterwards.
func TestBoundsBodyTimeout(t *testing.T) {
	up := newUpstream(t, barrierResponder(always(http.StatusOK)))
	startCaddy(t, boundsConfig(t, up.URL, "body_timeout 500ms"))
	name := relayName(t)

	start := time.Now()
	status, _, err := badRaw(t, []byte(badRequestHead("/big", 1000)+`{"n":1}`), waitTimeout)
	if status != http.StatusRequestTimeout {
		t.Fatalf("stalled body: status %d (%v) after %s, want 408", status, err, time.Since(start))
	}
	opsWaitOverview(t, name, "no memory held", func(s *opsRelayStatus) bool { return s.MemoryBytes == 0 })
	if got := opsOverview(t, name).Requests["timeout"]; got != 1 {
		t.Errorf("requests by outcome timeout = %d, want 1", got)
	}
	mustAccept(t, relayURL("/big", ""), payload(t))
}

func TestConfigErrorMaxBodyOverMaxMemory(t *testing.T) {
	err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream http://127.0.0.1:1
		name %s
		store memory
		max_body 512MiB
	}`, relayName(t))))
	if err == nil || !strings.Contains(err.Error(), "max_memory") {
		t.Fatalf("max_body 512MiB over the default max_memory: error %v, want one naming max_memory", err)
	}
}

func TestConfigErrorMaxBodyOverMaxStored(t *testing.T) {
	err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream http://127.0.0.1:1
		name %s
		store memory
		max_body 2MiB
		max_stored 1MiB
	}`, relayName(t))))
	if err == nil || !strings.Contains(err.Error(), "max_stored") {
		t.Fatalf("max_body 2MiB over max_stored 1MiB: error %v, want one naming max_stored", err)
	}
}

// TestBoundsMaxStored: the bytes kept are bounded by max_stored. A payload
// over it makes the oldest dead letters give way (counted as dropped),
// and with none left it gets 503 with Retry-After and a JSON error; once
// deliveries free the bytes the sender's retry is accepted. The overview
// shows the bytes kept and the bound.
func TestBoundsMaxStored(t *testing.T) {
	var healthy atomic.Bool
	up := newUpstream(t, func(h *hit) reply {
		switch {
		case bytes.Contains(h.Body, []byte(`"dead":true`)):
			return reply{status: http.StatusUnprocessableEntity} // never succeeds: a dead letter
		case healthy.Load():
			return reply{status: http.StatusOK}
		}
		return reply{status: http.StatusInternalServerError} // retried, stays queued
	})
	// history off: what is measured is the payloads' bytes, which records
	// would keep after delivery
	startCaddy(t, boundsConfig(t, up.URL, "max_stored 1MiB\n\t\thistory off"))
	name := relayName(t)
	sized := func(dead bool) []byte {
		p := payload(t, fmt.Sprintf(`"dead":%t`, dead), `"pad":"`+strings.Repeat("x", 300<<10)+`"`)
		return p
	}

	for range 3 {
		mustAccept(t, relayURL("/big", ""), sized(true))
	}
	s := opsWaitOverview(t, name, "three dead letters", func(s *opsRelayStatus) bool { return intOf(s.DeadLetters) == 3 })
	if s.MaxStored != 1<<20 || s.StoredBytes < 900<<10 || s.StoredBytes > 1<<20 {
		t.Fatalf("overview shows stored_bytes %d of max_stored %d; want about 900 KiB of 1 MiB", s.StoredBytes, s.MaxStored)
	}

	// each held payload takes the place of the oldest dead letter
	held := [][]byte{sized(false), sized(false), sized(false)}
	for _, p := range held {
		mustAccept(t, relayURL("/big", ""), p)
	}
	s = opsOverview(t, name)
	if intOf(s.DeadLetters) != 0 || s.DeadDropped != 3 {
		t.Fatalf("after 3 payloads over max_stored: %d dead letters, %d dropped; want 0 and 3", intOf(s.DeadLetters), s.DeadDropped)
	}
	m := opsScrapeMetrics(t)
	if got := m.value(t, "caddy_webhook_relay_dead_dropped_total", "relay="+name); got != 3 {
		t.Errorf("caddy_webhook_relay_dead_dropped_total = %v, want 3", got)
	}
	if got := m.value(t, "caddy_webhook_relay_stored_bytes", "relay="+name); got < 900<<10 || got > 1<<20 {
		t.Errorf("caddy_webhook_relay_stored_bytes = %v, want about 900 KiB", got)
	}

	refused := sized(false)
	a := post(t, relayURL("/big", ""), refused)
	expectErrorBody(t, a, http.StatusServiceUnavailable, "store full")
	if a.header.Get("Retry-After") == "" {
		t.Errorf("no Retry-After on the 503; headers %v", a.header)
	}
	if got := opsOverview(t, name).Requests["unavailable"]; got != 1 {
		t.Errorf("requests by outcome unavailable = %d, want 1", got)
	}

	healthy.Store(true)
	for _, p := range held {
		up.waitDelivered(t, p)
	}
	opsWaitOverview(t, name, "the delivered bytes to be given back", func(s *opsRelayStatus) bool {
		return intOf(s.Backlog) == 0 && s.StoredBytes == 0
	})
	mustAccept(t, relayURL("/big", ""), refused) // the sender's retry
	up.waitDelivered(t, refused)
}
