package processtest

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// redisRelayName is the relay name every instance of the Redis tests uses:
// the name, not the instance, identifies the shared queue.
const redisRelayName = "shared"

// redisStream is the queue stream of the relay's one destination
// ("upstream", its lane) in Redis (default key prefix).
const redisStream = "{webhook_relay:" + redisRelayName + "}:q:upstream"

// redisSite is a Caddyfile site with one Redis-backed relay named "shared"
// forwarding to upstream. The Redis timeouts are short so that a dead Redis
// turns into a 503 at once; the visibility timeout is the least the module
// accepts; the backoff is short so that deliveries follow soon after the
// upstream comes back.
func redisSite(upstream *Upstream, srv *redistest.Server) string {
	return fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay %s {
		name %s
		key json.id
		backoff 50ms 500ms
		store redis %s {
			dial_timeout       500ms
			read_timeout       500ms
			write_timeout      500ms
			visibility_timeout 20s
		}
	}
}`, upstream.URL("/hook"), redisRelayName, srv.URL())
}

// inspector is a go-redis client on the test's Redis, to look at the
// relay's stream and consumer group from outside.
func inspector(t *testing.T, srv *redistest.Server) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), DialTimeout: time.Second,
		ReadTimeout: time.Second, WriteTimeout: time.Second, MaxRetries: 1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// queueState is what Redis holds for the relay: stream length (backlog)
// and pending (claimed, unacknowledged) entries by consumer.
type queueState struct {
	Len     int64
	Pending int64
	ByOwner map[string]int64
}

func (q queueState) String() string {
	return fmt.Sprintf("backlog %d, pending %d %v", q.Len, q.Pending, q.ByOwner)
}

func readQueue(c *redis.Client) (queueState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var q queueState
	n, err := c.XLen(ctx, redisStream).Result()
	if err != nil {
		return q, err
	}
	q.Len = n
	p, err := c.XPending(ctx, redisStream, "relay").Result()
	if err != nil {
		return q, err
	}
	q.Pending, q.ByOwner = p.Count, p.Consumers
	return q, nil
}

// mustQueue is readQueue that fails the test on an error.
func mustQueue(t *testing.T, c *redis.Client) queueState {
	t.Helper()
	q, err := readQueue(c)
	if err != nil {
		t.Fatalf("reading the relay's queue from Redis: %v", err)
	}
	return q
}

// relayOverview reads the relay's entry in the instance's admin API
// (GET /webhook_relay/): its request and delivery counters.
func relayOverview(in *Instance) (requests, deliveries map[string]int64, err error) {
	resp, err := httpClient.Get(fmt.Sprintf("http://127.0.0.1:%d/webhook_relay/", in.AdminPort))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	var relays []struct {
		Name       string           `json:"name"`
		Requests   map[string]int64 `json:"requests"`
		Deliveries map[string]int64 `json:"deliveries"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&relays); err != nil {
		return nil, nil, err
	}
	for _, r := range relays {
		if r.Name == redisRelayName {
			return r.Requests, r.Deliveries, nil
		}
	}
	return nil, nil, fmt.Errorf("no relay %q in the admin overview", redisRelayName)
}

// queueString reads the queue for a message.
func queueString(c *redis.Client) string {
	q, err := readQueue(c)
	if err != nil {
		return "cannot read the queue: " + err.Error()
	}
	return q.String()
}

// waitQueueEmpty waits until Redis holds no queued and no pending entry.
func waitQueueEmpty(t *testing.T, c *redis.Client, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() bool {
		q, err := readQueue(c)
		return err == nil && q.Len == 0 && q.Pending == 0
	}, "%s", testkit.Lazy(func() string { return "queue in Redis not empty after every delivery: " + queueString(c) }))
}
