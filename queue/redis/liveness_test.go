package redis_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/redis"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
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

// claimDuring claims with s every 20ms for d, or until it takes an entry,
// and returns what it took: that a store takes nothing for a while is
// proved by letting the while pass.
func claimDuring(t *testing.T, s queue.Store, d time.Duration) []string {
	t.Helper()
	end := time.Now().Add(d)
	for {
		got := claimIDs(t, s, 1)
		if len(got) > 0 || !time.Now().Before(end) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	if got := claimDuring(t, b, 3*ttl); len(got) != 0 {
		t.Fatalf("b took %v from a live consumer", got)
	}

	a.StopLiveness() // as if a were killed
	stopped := time.Now()
	var got []string
	testkit.Eventually(t, 10*time.Second, func() bool {
		got = append(got, claimIDs(t, b, len(want)-len(got))...)
		return len(got) == len(want)
	}, "b took over %v since a's liveness stopped, want %v", testkit.Lazy(func() string { return fmt.Sprint(got) }), want)
	took := time.Since(stopped)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("b took over %v after a's liveness stopped, want %v", got, want)
	}
	t.Logf("b took over a's 3 entries %v after a stopped renewing (liveness TTL %v)", took.Round(time.Millisecond), ttl)
	if err := a.Extend(t.Context(), want); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("a's Extend after the takeover = %v, want ErrNotFound", err)
	}
	// a held nothing any more, so it left the group
	var names []string
	testkit.Eventually(t, 5*time.Second, func() bool {
		names = consumers(t, srv, prefix)
		return !slices.Contains(names, "a")
	}, "consumers %v: the dead consumer a is still in the group", testkit.Lazy(func() string { return fmt.Sprint(names) }))
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
	var got []string
	testkit.Eventually(t, 10*time.Second, func() bool {
		got = claimIDs(t, b, 1)
		return len(got) > 0
	}, "b took nothing, want [%s] after the visibility timeout", x.ID)
	if len(got) != 1 || got[0] != x.ID {
		t.Fatalf("b took %v, want [%s] after the visibility timeout", got, x.ID)
	}
	if waited := time.Since(claimedAt); waited < visibility-100*time.Millisecond {
		t.Errorf("b took the old consumer's entry after %v, before the visibility timeout %v", waited, visibility)
	}
}

// A retry given back by a consumer that then dies is neither lost nor
// held: any consumer claims it when it is due (it is in no pending list),
// and what the dead one held is taken over when its liveness key expires.
func TestRedisRetrySurvivesTakeover(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	clock := storetest.NewClock()
	open := func(consumer string) *redis.Store {
		s, err := redis.New(context.Background(), newClient(srv.Addr()), redis.Config{
			Prefix: prefix, Consumer: consumer, VisibilityTimeout: time.Hour, LivenessTTL: 600 * time.Millisecond,
		}, queue.Options{Window: time.Hour, Now: clock.Now})
		if err != nil {
			t.Fatalf("redis.New: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a := open("a")
	storetest.RetryHandover(t, clock, a, func() queue.Store {
		a.StopLiveness() // killed: its key expires, nothing else happens
		return open("b")
	})
}
