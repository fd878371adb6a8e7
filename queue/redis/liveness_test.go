package redis_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/redis"
)

// openLive opens a store with a short liveness TTL, closed when t ends.
func openLive(t *testing.T, srv *redistest.Server, prefix, consumer string, visibility, ttl time.Duration) *redis.Store {
	t.Helper()
	s, err := redis.New(context.Background(), newClient(srv.Addr()), redis.Config{
		Prefix:            prefix,
		Consumer:          consumer,
		VisibilityTimeout: visibility,
		LivenessTTL:       ttl,
	}, queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatalf("redis.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// consumers lists the group's consumers.
func consumers(t *testing.T, srv *redistest.Server, prefix string) []string {
	t.Helper()
	c := newClient(srv.Addr())
	defer c.Close()
	infos, err := c.XInfoConsumers(t.Context(), "{"+prefix+"}:q", "relay").Result()
	if err != nil {
		t.Fatalf("XINFO CONSUMERS: %v", err)
	}
	var names []string
	for _, i := range infos {
		names = append(names, i.Name)
	}
	return names
}

// claimUntil claims with s until it has taken want entries or the deadline
// passes, and returns what it took.
func claimUntil(t *testing.T, s queue.Store, want int, within time.Duration) []string {
	t.Helper()
	var got []string
	deadline := time.Now().Add(within)
	for len(got) < want && time.Now().Before(deadline) {
		got = append(got, claimIDs(t, s, want-len(got))...)
		if len(got) < want {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return got
}

// A store whose liveness key expires loses what it holds to the others at
// once, long before the visibility timeout, and leaves the group; one that
// renews its key keeps its entries.
func TestRedisLivenessTakeover(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	const visibility, ttl = time.Minute, 600 * time.Millisecond
	a := openLive(t, srv, prefix, "a", visibility, ttl)
	b := openLive(t, srv, prefix, "b", visibility, ttl)

	var want []string
	for _, k := range []string{"x", "y", "z"} {
		want = append(want, admit(t, a, k).ID)
	}
	if got := claimIDs(t, a, 10); len(got) != 3 {
		t.Fatalf("a claimed %v, want 3 entries", got)
	}
	// a stays alive for several TTLs: b takes nothing
	if got := claimUntil(t, b, 1, 3*ttl); len(got) != 0 {
		t.Fatalf("b took %v from a live consumer", got)
	}

	a.StopLiveness() // as if a were killed
	stopped := time.Now()
	got := claimUntil(t, b, 3, 10*time.Second)
	took := time.Since(stopped)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("b took over %v within 10s of a's liveness stopping, want %v", got, want)
	}
	t.Logf("b took over a's 3 entries %v after a stopped renewing (liveness TTL %v)", took.Round(time.Millisecond), ttl)
	if err := a.Extend(t.Context(), want); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("a's Extend after the takeover = %v, want ErrNotFound", err)
	}
	// a held nothing any more, so it left the group
	deadline := time.Now().Add(5 * time.Second)
	for slices.Contains(consumers(t, srv, prefix), "a") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if names := consumers(t, srv, prefix); slices.Contains(names, "a") {
		t.Errorf("consumers %v: the dead consumer a is still in the group", names)
	}
}

// A consumer that never kept a liveness key (an older relay) is not taken
// to be dead: its entries wait out the visibility timeout.
func TestRedisLivenessLeavesUnlistedConsumers(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	const visibility, ttl = 3 * time.Second, 300 * time.Millisecond
	b := openLive(t, srv, prefix, "b", visibility, ttl)
	x := admit(t, b, "x")

	c := newClient(srv.Addr())
	defer c.Close()
	if err := c.XReadGroup(t.Context(), &goredis.XReadGroupArgs{
		Group: "relay", Consumer: "old", Streams: []string{"{" + prefix + "}:q", ">"}, Count: 1,
	}).Err(); err != nil {
		t.Fatalf("XREADGROUP as old: %v", err)
	}
	claimedAt := time.Now()
	got := claimUntil(t, b, 1, 10*time.Second)
	if len(got) != 1 || got[0] != x.ID {
		t.Fatalf("b took %v, want [%s] after the visibility timeout", got, x.ID)
	}
	if waited := time.Since(claimedAt); waited < visibility-100*time.Millisecond {
		t.Errorf("b took the old consumer's entry after %v, before the visibility timeout %v", waited, visibility)
	}
}
