package dedupe_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookrelay/caddy-webhook-relay/dedupe"
	"github.com/hookrelay/caddy-webhook-relay/dedupe/storetest"
	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
)

var prefixSeq atomic.Int64

// uniquePrefix gives each store its own keys on a shared server.
func uniquePrefix() string {
	return "webhook_relay:t" + strconv.FormatInt(prefixSeq.Add(1), 10)
}

func newClient(addr string) redis.UniversalClient {
	return redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:        []string{addr},
		DialTimeout:  500 * time.Millisecond,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
		MaxRetries:   1,
	})
}

// openRedis opens a store on srv under prefix as consumer, closed when t ends.
func openRedis(t testing.TB, srv *redistest.Server, prefix, consumer string, visibility time.Duration, opts dedupe.Options) *dedupe.Redis {
	t.Helper()
	s, err := dedupe.NewRedis(context.Background(), newClient(srv.Addr()), dedupe.RedisConfig{
		Prefix:            prefix,
		Consumer:          consumer,
		VisibilityTimeout: visibility,
	}, opts)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	storetest.Run(t, func(t *testing.T, opts dedupe.Options) dedupe.Store {
		return openRedis(t, srv, uniquePrefix(), "c1", 0, opts)
	})
}

func BenchmarkRedisAdmit(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	storetest.Bench(b, func(b *testing.B) dedupe.Store {
		return openRedis(b, srv, uniquePrefix(), "c1", 0, dedupe.Options{Window: 24 * time.Hour})
	})
}

func BenchmarkRedisAdmitAOF(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{AOF: true})
	storetest.Bench(b, func(b *testing.B) dedupe.Store {
		return openRedis(b, srv, uniquePrefix(), "c1", 0, dedupe.Options{Window: 24 * time.Hour})
	})
}

func admit(t *testing.T, s dedupe.Store, key string) *dedupe.Entry {
	t.Helper()
	e := &dedupe.Entry{Key: key, Body: []byte(`{"k":"` + key + `"}`)}
	got, err := s.Admit(t.Context(), e)
	if err != nil || got != dedupe.Accepted {
		t.Fatalf("Admit(%q) = %v, %v; want accepted", key, got, err)
	}
	return e
}

func claimIDs(t *testing.T, s dedupe.Store, max int) []string {
	t.Helper()
	es, err := s.Claim(t.Context(), max)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}

func TestRedisUnreachable(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openRedis(t, srv, uniquePrefix(), "c1", 0, dedupe.Options{Window: time.Hour, MaxBacklog: 10})
	admit(t, s, "before")
	srv.Kill()

	start := time.Now()
	got, err := s.Admit(t.Context(), &dedupe.Entry{Key: "during", Body: []byte("{}")})
	if err == nil {
		t.Fatalf("Admit with Redis down = %v, nil; want an error", got)
	}
	if errors.Is(err, dedupe.ErrBacklogFull) {
		t.Fatalf("Admit with Redis down = ErrBacklogFull; want a connection error")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Admit with Redis down took %s; want a quick failure", took)
	}
	if _, err := s.Claim(t.Context(), 10); err == nil {
		t.Errorf("Claim with Redis down: no error")
	}
}

// A Redis restarted with AOF on keeps what was queued, and the store
// reconnects without being reopened.
func TestRedisRestartWithAOF(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	prefix := uniquePrefix()
	s := openRedis(t, srv, prefix, "c1", time.Second, dedupe.Options{Window: time.Hour})
	var want []string
	for i := range 5 {
		want = append(want, admit(t, s, "k"+strconv.Itoa(i)).ID)
	}
	held := claimIDs(t, s, 2) // claimed when Redis dies: still queued

	srv.Kill()
	srv.Restart()

	// the marker survived too
	var got dedupe.Admission
	var err error
	for range 50 { // the pool may hand out a dead connection first
		if got, err = s.Admit(t.Context(), &dedupe.Entry{Key: "k0"}); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || got != dedupe.Duplicate {
		t.Fatalf("Admit(k0) after restart = %v, %v; want duplicate", got, err)
	}
	st, err := s.Stats(t.Context())
	if err != nil || st.Backlog != 5 {
		t.Fatalf("Stats after restart = %+v, %v; want backlog 5", st, err)
	}
	claimed := claimIDs(t, s, 10)
	if len(claimed) != 3 {
		t.Fatalf("Claim after restart = %v; want the 3 unclaimed of %v", claimed, want)
	}
	for _, id := range claimed {
		if err := s.Ack(t.Context(), id); err != nil {
			t.Fatal(err)
		}
	}
	// the ones held before the crash come back after the visibility timeout
	time.Sleep(1100 * time.Millisecond)
	again := claimIDs(t, s, 10)
	if len(again) != 2 || again[0] != held[0] || again[1] != held[1] {
		t.Fatalf("Claim after the visibility timeout = %v; want %v", again, held)
	}
}

func TestRedisTwoConsumersDisjoint(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	opts := dedupe.Options{Window: time.Hour}
	a := openRedis(t, srv, prefix, "a", time.Minute, opts)
	b := openRedis(t, srv, prefix, "b", time.Minute, opts)
	const n = 200
	for i := range n {
		s := a
		if i%2 == 1 {
			s = b
		}
		admit(t, s, "k"+strconv.Itoa(i))
	}
	var mu sync.Mutex
	seen := make(map[string]int)
	var wg sync.WaitGroup
	for _, s := range []dedupe.Store{a, b, a, b} {
		wg.Go(func() {
			for {
				es, err := s.Claim(context.Background(), 7)
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				if len(es) == 0 {
					return
				}
				mu.Lock()
				for _, e := range es {
					seen[e.ID]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("%d distinct entries claimed, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s claimed %d times", id, c)
		}
	}
}

// A consumer that dies holding entries loses them to another after the
// visibility timeout; one that keeps extending does not.
func TestRedisTakeover(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	opts := dedupe.Options{Window: time.Hour}
	const visibility = 500 * time.Millisecond
	dead := openRedis(t, srv, prefix, "dead", visibility, opts)
	live := openRedis(t, srv, prefix, "live", visibility, opts)
	other := openRedis(t, srv, prefix, "other", visibility, opts)

	x := admit(t, dead, "x")
	y := admit(t, dead, "y")
	if got := claimIDs(t, dead, 1); len(got) != 1 || got[0] != x.ID {
		t.Fatalf("dead claimed %v, want [%s]", got, x.ID)
	}
	if got := claimIDs(t, live, 1); len(got) != 1 || got[0] != y.ID {
		t.Fatalf("live claimed %v, want [%s]", got, y.ID)
	}
	// record an attempt on x: the taker must see it
	xe := &dedupe.Entry{ID: x.ID, Attempts: 3, LastStatus: 502, LastError: "bad gateway"}
	if err := dead.Attempted(t.Context(), xe); err != nil {
		t.Fatal(err)
	}
	if got := claimIDs(t, other, 10); len(got) != 0 {
		t.Fatalf("other claimed %v before the visibility timeout", got)
	}

	// live extends y well within the timeout; dead does nothing
	deadline := time.Now().Add(3 * visibility)
	for time.Now().Before(deadline) {
		if err := live.Extend(t.Context(), []string{y.ID}); err != nil {
			t.Fatalf("Extend: %v", err)
		}
		time.Sleep(visibility / 5)
	}
	es, err := other.Claim(t.Context(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].ID != x.ID {
		t.Fatalf("other took over %d entries, want only %s", len(es), x.ID)
	}
	if es[0].Attempts != 3 || es[0].LastStatus != 502 || es[0].LastError != "bad gateway" {
		t.Errorf("taken over entry: attempts %d, status %d, error %q; want 3, 502, bad gateway",
			es[0].Attempts, es[0].LastStatus, es[0].LastError)
	}
	// the dead consumer's extend now reports the loss
	if err := dead.Extend(t.Context(), []string{x.ID}); !errors.Is(err, dedupe.ErrNotFound) {
		t.Errorf("Extend of a taken-over entry = %v, want ErrNotFound", err)
	}

	// Release hands entries over at once, without waiting for the timeout
	if err := live.Release(t.Context(), []string{y.ID}); err != nil {
		t.Fatal(err)
	}
	if got := claimIDs(t, other, 10); len(got) != 1 || got[0] != y.ID {
		t.Fatalf("other claimed %v after live released, want [%s]", got, y.ID)
	}
	if err := other.Ack(t.Context(), x.ID); err != nil {
		t.Fatal(err)
	}
	if err := other.Ack(t.Context(), y.ID); err != nil {
		t.Fatal(err)
	}
	st, err := other.Stats(t.Context())
	if err != nil || st.Backlog != 0 {
		t.Fatalf("Stats = %+v, %v; want an empty backlog", st, err)
	}
}

// The marker's TTL only cleans up: it is never shorter than the window.
func TestRedisMarkerTTL(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	s := openRedis(t, srv, prefix, "c1", 0, dedupe.Options{Window: 2 * time.Hour})
	admit(t, s, "k")
	c := newClient(srv.Addr())
	defer c.Close()
	ttl, err := c.PTTL(t.Context(), "{"+prefix+"}:seen:k").Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl < 2*time.Hour-time.Minute || ttl > 2*time.Hour+time.Minute {
		t.Errorf("marker TTL = %s, want about the 2h window", ttl)
	}
}

func TestRedisDurableAckNeedsWaitAOF(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	c := newClient(srv.Addr())
	s, err := dedupe.NewRedis(t.Context(), c, dedupe.RedisConfig{Prefix: uniquePrefix(), DurableAck: true},
		dedupe.Options{Window: time.Hour})
	if err != nil {
		// Redis < 7.2: a clear refusal at open, never a silent downgrade
		c.Close()
		t.Logf("durable_ack refused: %v", err)
		return
	}
	defer s.Close()
	admit(t, s, "k")
}

// TestRedisOpensWhileDown: a store opened while Redis is down refuses admits
// and, once Redis is back, works without being reopened: the consumer group
// and the scripts are created on first use.
func TestRedisOpensWhileDown(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	srv.Kill()
	s := openRedis(t, srv, uniquePrefix(), "c1", time.Minute, dedupe.Options{Window: time.Hour})
	ctx := context.Background()
	if _, err := s.Admit(ctx, &dedupe.Entry{Key: "k", Body: []byte("{}")}); err == nil {
		t.Fatal("admit succeeded with Redis down")
	}

	srv.Restart()
	var admitted *dedupe.Entry
	deadline := time.Now().Add(10 * time.Second)
	for admitted == nil {
		e := &dedupe.Entry{Key: "k", Body: []byte("{}")}
		a, err := s.Admit(ctx, e)
		if err == nil && a == dedupe.Accepted {
			admitted = e
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admit after Redis came back: %v %v", a, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err := s.Claim(ctx, 10)
	if err != nil || len(got) != 1 || got[0].ID != admitted.ID {
		t.Fatalf("Claim = %v, %v; want the admitted entry", got, err)
	}
	if err := s.Ack(ctx, got[0].ID); err != nil {
		t.Fatal(err)
	}
}

// TestRedisWarnsUnlessNoeviction: an evicting Redis can drop payloads that
// were answered 200, so opening a store on one logs a loud warning, and
// opening one on a noeviction Redis logs none.
func TestRedisWarnsUnlessNoeviction(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx := context.Background()
	admin := newClient(srv.Addr())
	defer admin.Close()

	open := func() []observer.LoggedEntry {
		core, logs := observer.New(zap.WarnLevel)
		s, err := dedupe.NewRedis(ctx, newClient(srv.Addr()), dedupe.RedisConfig{
			Prefix: uniquePrefix(), Consumer: "c", VisibilityTimeout: time.Minute, Logger: zap.New(core),
		}, dedupe.Options{Window: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
		return logs.FilterMessageSnippet("maxmemory-policy").All()
	}

	if got := open(); len(got) != 0 {
		t.Fatalf("noeviction: warned %v", got)
	}
	if err := admin.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	got := open()
	if len(got) != 1 || got[0].ContextMap()["maxmemory-policy"] != "allkeys-lru" {
		t.Fatalf("allkeys-lru: want one warning naming the policy, got %v", got)
	}
}

// An ack is three commands, not one step. Cut off after its first (the
// process dies, the connection drops), the payload is gone from the stream
// but still pending: the next takeover must drop it from the group, with its
// recorded attempt, instead of handing out nothing forever.
func TestRedisAckCutOffAfterDelete(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	const visibility = 200 * time.Millisecond
	a := openRedis(t, srv, prefix, "a", visibility, dedupe.Options{Window: time.Hour})
	b := openRedis(t, srv, prefix, "b", visibility, dedupe.Options{Window: time.Hour})
	x := admit(t, a, "x")
	if got := claimIDs(t, a, 1); len(got) != 1 {
		t.Fatalf("claimed %v", got)
	}
	if err := a.Attempted(t.Context(), &dedupe.Entry{ID: x.ID, Attempts: 1, LastStatus: 503}); err != nil {
		t.Fatal(err)
	}

	raw := newClient(srv.Addr())
	defer raw.Close()
	stream, att := "{"+prefix+"}:q", "{"+prefix+"}:att"
	sids, err := raw.XRange(t.Context(), stream, "-", "+").Result()
	if err != nil || len(sids) != 1 {
		t.Fatalf("XRANGE = %v, %v", sids, err)
	}
	sid := sids[0].ID
	if err := raw.XDel(t.Context(), stream, sid).Err(); err != nil { // the ack's first command, alone
		t.Fatal(err)
	}

	time.Sleep(visibility + 100*time.Millisecond) // Redis's own idle clock
	if got := claimIDs(t, b, 10); len(got) != 0 {
		t.Fatalf("b claimed %v, want nothing", got)
	}
	pending, err := raw.XPending(t.Context(), stream, "relay").Result()
	if err != nil || pending.Count != 0 {
		t.Errorf("pending after the takeover: %+v, %v; want none", pending, err)
	}
	if n, err := raw.HLen(t.Context(), att).Result(); err != nil || n != 0 {
		t.Errorf("attempts left: %d, %v; want none", n, err)
	}
	if st, err := b.Stats(t.Context()); err != nil || st.Backlog != 0 {
		t.Errorf("Stats = %+v, %v; want an empty backlog", st, err)
	}
}
