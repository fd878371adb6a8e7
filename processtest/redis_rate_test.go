package processtest

import (
	"fmt"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// TestRedisDestinationRateShared: two Caddy processes on one Redis deliver
// one destination at rate 5/s between them, not 5/s each: 30 payloads,
// half sent to each, reach the upstream over at least 4 s and never more
// than 7 within one second. The limit is kept in Redis under the relay's
// hash tag.
func TestRedisDestinationRateShared(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rc := inspector(t, srv)
	up := NewUpstream(t)
	up.Start()
	site := fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay {
		name %s
		key json.id
		concurrency 16
		store redis %s
		destination upstream %s {
			rate 5/s
		}
	}
}`, redisRelayName, srv.URL(), up.URL("/hook"))
	a, b := NewInstance(t), NewInstance(t)
	a.Start(site)
	b.Start(site)

	const n = 30
	for i := range n {
		in := a
		if i%2 == 1 {
			in = b
		}
		if r := postResp(in.URL("/"), payload(i)); !r.accepted() {
			t.Fatalf("payload %d: %s, want 200 accepted", i, r)
		}
	}
	key := "{webhook_relay:" + redisRelayName + "}:rate:upstream"
	testkit.Eventually(t, 5*time.Second, func() bool { return rc.Exists(t.Context(), key).Val() == 1 },
		"no rate limit state under %s", key)
	waitDelivered(t, up, n, 20*time.Second)

	var at []time.Time
	for _, r := range up.Requests() {
		at = append(at, r.At)
	}
	testkit.CheckRate(t, at, 4*time.Second, 7)
	_, delA, errA := relayOverview(a)
	_, delB, errB := relayOverview(b)
	if errA != nil || errB != nil {
		t.Fatalf("admin overview: %v, %v", errA, errB)
	}
	t.Logf("successful deliveries by instance: %d, %d", delA["success"], delB["success"])
	if delA["success"] == 0 || delB["success"] == 0 {
		t.Errorf("one instance delivered everything (%d, %d): the test shows nothing of a shared limit", delA["success"], delB["success"])
	}
}
