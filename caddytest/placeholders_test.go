package caddytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// TestPlaceholdersInAccessLog: {http.webhook_relay.outcome} and
// {http.webhook_relay.key} are set for the access log, and the key is the
// Idempotency-Key the upstream gets.
func TestPlaceholdersInAccessLog(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	logFile := filepath.Join(t.TempDir(), "access.log")
	startCaddy(t, globalOptions+fmt.Sprintf(`
:%d {
	log {
		output file %s
		format json
	}
	log_append relay_outcome {http.webhook_relay.outcome}
	log_append relay_key {http.webhook_relay.key}
	webhook_relay /in {
		upstream %s/hook
		name %s
		auth_query token tok-s3cret
		store memory
		backoff 10ms 50ms
	}
}`, relayPort, logFile, up.URL, relayName(t)))
	in := relayURL("/in", "token=tok-s3cret")

	body := payload(t)
	mustAccept(t, in, body)
	expectStatus(t, post(t, in, body), http.StatusOK, "duplicate")
	expectStatus(t, post(t, relayURL("/in", "token=wrong"), payload(t)), http.StatusUnauthorized, "")
	delivered := up.waitDelivered(t, body)

	type entry struct {
		Outcome string `json:"relay_outcome"`
		Key     string `json:"relay_key"`
		Status  int    `json:"status"`
	}
	var entries []entry
	var data []byte
	testkit.Eventually(t, waitTimeout, func() bool {
		entries = entries[:0]
		data, _ = os.ReadFile(logFile)
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e entry
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.Status != 0 {
				entries = append(entries, e)
			}
		}
		return len(entries) >= 3
	}, "access log holds %v", testkit.Lazy(func() string { return fmt.Sprintf("%d requests, want 3:\n%s", len(entries), data) }))

	// each line is written after its response went out, so the three may
	// be logged in any order
	want := []entry{
		{Outcome: "accepted", Key: delivered[0].Key, Status: 200},
		{Outcome: "duplicate", Key: delivered[0].Key, Status: 200},
		{Outcome: "unauthorized", Key: "", Status: 401},
	}
	for _, w := range want {
		if !slices.Contains(entries, w) {
			t.Errorf("no access log entry %+v; the log has %+v", w, entries)
		}
	}
}
