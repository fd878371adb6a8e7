package redis_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/redis"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

var prefixSeq atomic.Int64

// uniquePrefix gives each store its own keys on a shared server.
func uniquePrefix() string {
	return "webhook_relay:t" + strconv.FormatInt(prefixSeq.Add(1), 10)
}

func newClient(addr string) goredis.UniversalClient {
	return goredis.NewUniversalClient(&goredis.UniversalOptions{
		Addrs:        []string{addr},
		DialTimeout:  500 * time.Millisecond,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
		// as the module sets them
		MaxRetries:       -1,
		PipelinePoolSize: -1,
	})
}

// openRedis opens a store on srv under prefix as consumer, closed when t ends.
func openRedis(t testing.TB, srv *redistest.Server, prefix, consumer string, visibility time.Duration, opts queue.Options) *redis.Store {
	t.Helper()
	s, err := redis.New(context.Background(), newClient(srv.Addr()), redis.Config{
		Prefix:            prefix,
		Consumer:          consumer,
		VisibilityTimeout: visibility,
	}, opts)
	if err != nil {
		t.Fatalf("redis.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	storetest.Run(t, func(t *testing.T, opts queue.Options) queue.Store {
		return openRedis(t, srv, uniquePrefix(), "c1", 0, opts)
	})
}

// BenchmarkRedisAdmit: with history off, then on (a record with each
// payload), on the same server.
func BenchmarkRedisAdmit(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	for _, history := range []time.Duration{0, 24 * time.Hour} {
		b.Run("history="+map[bool]string{false: "off", true: "on"}[history > 0], func(b *testing.B) {
			storetest.Bench(b, func(b *testing.B) queue.Store {
				return openRedis(b, srv, uniquePrefix(), "c1", 0, queue.Options{Window: 24 * time.Hour, History: history})
			})
		})
	}
}

func BenchmarkRedisAdmitAOF(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{AOF: true})
	storetest.Bench(b, func(b *testing.B) queue.Store {
		return openRedis(b, srv, uniquePrefix(), "c1", 0, queue.Options{Window: 24 * time.Hour})
	})
}

func admit(t *testing.T, s queue.Store, key string) *queue.Entry {
	t.Helper()
	e := &queue.Entry{Key: key, Body: []byte(`{"k":"` + key + `"}`)}
	got, err := s.Admit(t.Context(), e)
	if err != nil || got != queue.Accepted {
		t.Fatalf("Admit(%q) = %v, %v; want accepted", key, got, err)
	}
	return e
}

func claimIDs(t *testing.T, s queue.Store, max int) []string {
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
	s := openRedis(t, srv, uniquePrefix(), "c1", 0, queue.Options{Window: time.Hour, MaxBacklog: 10})
	admit(t, s, "before")
	srv.Kill()

	start := time.Now()
	got, err := s.Admit(t.Context(), &queue.Entry{Key: "during", Body: []byte("{}")})
	if err == nil {
		t.Fatalf("Admit with Redis down = %v, nil; want an error", got)
	}
	if errors.Is(err, queue.ErrBacklogFull) {
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
	s := openRedis(t, srv, prefix, "c1", time.Second, queue.Options{Window: time.Hour})
	var want []string
	for i := range 5 {
		want = append(want, admit(t, s, "k"+strconv.Itoa(i)).ID)
	}
	held := claimIDs(t, s, 2) // claimed when Redis dies: still queued

	srv.Kill()
	srv.Restart()

	// the marker survived too
	var got queue.Admission
	var err error
	testkit.Eventually(t, 10*time.Second, func() bool { // the pool may hand out a dead connection first
		got, err = s.Admit(t.Context(), &queue.Entry{Key: "k0"})
		return err == nil
	}, "Admit(k0) after restart still fails: %v", testkit.Lazy(func() string { return fmt.Sprint(err) }))
	if got != queue.Duplicate {
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

// Consumers sharing the relay's keys claim disjoint entries.
func TestRedisTwoConsumersDisjoint(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	opts := queue.Options{Window: time.Hour}
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
	storetest.ClaimsDisjoint(t, n, 7, a, b, a, b)
}

// A consumer that dies holding entries loses them to another after the
// visibility timeout; one that keeps extending does not.
func TestRedisTakeover(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	opts := queue.Options{Window: time.Hour}
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
	// record an attempt on x (a retry due at once, claimed again): the
	// taker must see it
	xe := &queue.Entry{ID: x.ID, Attempts: 3, LastStatus: 502, LastError: "bad gateway"}
	if err := dead.Retry(t.Context(), xe, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := claimIDs(t, dead, 1); len(got) != 1 || got[0] != x.ID {
		t.Fatalf("dead claimed %v after the retry, want [%s]", got, x.ID)
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
	if err := dead.Extend(t.Context(), []string{x.ID}); !errors.Is(err, queue.ErrNotFound) {
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
	s := openRedis(t, srv, prefix, "c1", 0, queue.Options{Window: 2 * time.Hour})
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
	s, err := redis.New(t.Context(), c, redis.Config{Prefix: uniquePrefix(), DurableAck: true},
		queue.Options{Window: time.Hour})
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
	s := openRedis(t, srv, uniquePrefix(), "c1", time.Minute, queue.Options{Window: time.Hour})
	ctx := context.Background()
	if _, err := s.Admit(ctx, &queue.Entry{Key: "k", Body: []byte("{}")}); err == nil {
		t.Fatal("admit succeeded with Redis down")
	}

	srv.Restart()
	var admitted *queue.Entry
	var a queue.Admission
	var err error
	testkit.Eventually(t, 10*time.Second, func() bool {
		e := &queue.Entry{Key: "k", Body: []byte("{}")}
		if a, err = s.Admit(ctx, e); err == nil && a == queue.Accepted {
			admitted = e
		}
		return admitted != nil
	}, "admit after Redis came back: %v", testkit.Lazy(func() string { return fmt.Sprintf("%v %v", a, err) }))
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
		s, err := redis.New(ctx, newClient(srv.Addr()), redis.Config{
			Prefix: uniquePrefix(), Consumer: "c", VisibilityTimeout: time.Minute, Logger: zap.New(core),
		}, queue.Options{Window: time.Hour})
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
	a := openRedis(t, srv, prefix, "a", visibility, queue.Options{Window: time.Hour})
	b := openRedis(t, srv, prefix, "b", visibility, queue.Options{Window: time.Hour})
	x := admit(t, a, "x")
	if got := claimIDs(t, a, 1); len(got) != 1 {
		t.Fatalf("claimed %v", got)
	}
	// an attempt recorded (a retry due at once, claimed again)
	if err := a.Retry(t.Context(), &queue.Entry{ID: x.ID, Attempts: 1, LastStatus: 503}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := claimIDs(t, a, 1); len(got) != 1 || got[0] != x.ID {
		t.Fatalf("claimed %v after the retry, want [%s]", got, x.ID)
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
	// and its hold on the body: the body and its size go too
	if st, err := b.Stats(t.Context()); err != nil || st.Backlog != 0 || st.Stored != 0 {
		t.Errorf("Stats = %+v, %v; want an empty backlog, nothing stored", st, err)
	}
	if keys, err := raw.Keys(t.Context(), "{"+prefix+"}:b:*").Result(); err != nil || len(keys) != 0 {
		t.Errorf("body keys left: %v, %v", keys, err)
	}
}

// pipelineHook lets a test see, slow down or repeat what the store sends.
type pipelineHook struct {
	pipeline func(next goredis.ProcessPipelineHook, ctx context.Context, cmds []goredis.Cmder) error
}

func (h pipelineHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h pipelineHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return next
}
func (h pipelineHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error { return h.pipeline(next, ctx, cmds) }
}

// openHooked opens a store whose client runs hook, with a fixed clock.
func openHooked(t *testing.T, srv *redistest.Server, prefix string, hook goredis.Hook, opts queue.Options) *redis.Store {
	t.Helper()
	c := newClient(srv.Addr())
	if hook != nil {
		c.AddHook(hook)
	}
	s, err := redis.New(t.Context(), c, redis.Config{Prefix: prefix, Consumer: "c1"}, opts)
	if err != nil {
		t.Fatalf("redis.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// entryID writes an id as the store does.
func entryID(sid string) string {
	ms, seq, _ := strings.Cut(sid, "-")
	a, _ := strconv.ParseUint(ms, 10, 64)
	b, _ := strconv.ParseUint(seq, 10, 64)
	return fmt.Sprintf("%016d-%010d", a, b)
}

// An admit that runs twice (its reply lost and the pipeline sent again, a
// NOSCRIPT fallback, a failover) answers Accepted with the same id both
// times and stores the payload once.
func TestRedisAdmitRunsTwice(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	raw := newClient(srv.Addr())
	defer raw.Close()
	ctx := t.Context()

	// a small body travels inside the script, a larger one is staged
	// under a key of its own first
	staged := []byte(`{"n":"` + strings.Repeat("x", redis.InlineBodyMax) + `"}`)
	for _, c := range []struct {
		name string
		body []byte
	}{{"script", []byte(`{"n":1}`)}, {"script, staged body", staged}} {
		t.Run(c.name, func(t *testing.T) {
			admitTwice(t, srv, uniquePrefix(), c.body)
		})
	}

	// every pipeline the store sends runs twice, as when a reply is lost
	// and it is sent again; after SCRIPT FLUSH every admit also meets
	// NOSCRIPT and falls back to EVAL first
	twice := pipelineHook{pipeline: func(next goredis.ProcessPipelineHook, ctx context.Context, cmds []goredis.Cmder) error {
		_ = next(ctx, cmds)
		return next(ctx, cmds)
	}}
	for _, flush := range []bool{false, true} {
		t.Run(fmt.Sprintf("pipeline, flushed %v", flush), func(t *testing.T) {
			prefix := uniquePrefix()
			s := openHooked(t, srv, prefix, twice, queue.Options{Window: time.Hour})
			if flush {
				if err := raw.ScriptFlush(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			}
			const n = 20
			ids := make([]string, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					e := &queue.Entry{Key: "k" + strconv.Itoa(i), Body: []byte(`{"i":` + strconv.Itoa(i) + `}`)}
					got, err := s.Admit(ctx, e)
					if err != nil || got != queue.Accepted {
						t.Errorf("Admit(%s) = %v, %v; want accepted", e.Key, got, err)
						return
					}
					ids[i] = e.ID
				})
			}
			wg.Wait()
			if n, err := raw.XLen(ctx, "{"+prefix+"}:q").Result(); err != nil || n != int64(len(ids)) {
				t.Fatalf("XLEN = %d, %v; want %d, each payload once", n, err, len(ids))
			}
			for i, id := range ids {
				body, err := s.Body(ctx, id)
				if want := `{"i":` + strconv.Itoa(i) + `}`; err != nil || string(body) != want {
					t.Errorf("Body(%s) = %q, %v; want %q", id, body, err, want)
				}
			}
		})
	}
}

// admitTwice runs one admit of body twice under the same token and checks
// that the second run answers what the first did, storing nothing more.
func admitTwice(t *testing.T, srv *redistest.Server, prefix string, body []byte) {
	stream := "{" + prefix + "}:q"
	raw := newClient(srv.Addr())
	defer raw.Close()
	ctx := t.Context()
	s := openRedis(t, srv, prefix, "c1", 0, queue.Options{Window: time.Hour})
	e := &queue.Entry{Key: "twice", Body: body}
	now := time.Now()
	first, err := redis.AdmitOnce(ctx, s, raw, e, "token-1", now)
	if err != nil {
		t.Fatal(err)
	}
	second, err := redis.AdmitOnce(ctx, s, raw, e, "token-1", now)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 2 || first[0] != int64(0) || len(second) != 2 || second[0] != int64(0) || first[1] != second[1] {
		t.Fatalf("the same admit twice answered %v then %v; want {0 sid} both times, the same sid", first, second)
	}
	if n, err := raw.XLen(ctx, stream).Result(); err != nil || n != 1 {
		t.Fatalf("XLEN = %d, %v; want the payload stored once", n, err)
	}
	id := entryID(first[1].(string))
	if b, err := s.Body(ctx, id); err != nil || string(b) != string(e.Body) {
		t.Fatalf("Body(%s) = %q, %v; want %q", id, b, err, e.Body)
	}
	// another admit of the key, with its own token, is a duplicate
	if got, err := redis.AdmitOnce(ctx, s, raw, e, "token-2", time.Now()); err != nil || len(got) != 1 || got[0] != int64(1) {
		t.Fatalf("a new admit of the key = %v, %v; want {1} (duplicate)", got, err)
	}
	// no body left on its way in, nor any without an expiry
	keys, err := raw.Keys(ctx, "{"+prefix+"}:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.HasPrefix(k, "{"+prefix+"}:in:") {
			t.Errorf("staged body %s left behind", k)
		}
	}
	if ttl, err := raw.PTTL(ctx, "{"+prefix+"}:b:"+id).Result(); err != nil || ttl != -1 {
		t.Errorf("body key TTL = %v, %v; want none", ttl, err)
	}
	if st, err := s.Stats(ctx); err != nil || st.Keys != 1 || st.Backlog != 1 {
		t.Fatalf("Stats = %+v, %v; want 1 key and a backlog of 1", st, err)
	}
}

// Concurrent admits share pipelines of at most RedisPipelineBytes of
// bodies; an admit with a body larger than that goes alone.
func TestRedisPipelineByteBound(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	type sent struct{ cmds, bytes, big int } // admits, bytes of bodies, big bodies
	var mu sync.Mutex
	var log []sent
	const bigSize = redis.PipelineBytes + 1<<19
	hook := pipelineHook{pipeline: func(next goredis.ProcessPipelineHook, ctx context.Context, cmds []goredis.Cmder) error {
		var p sent
		for _, c := range cmds {
			if c.Name() == "evalsha" {
				p.cmds++ // one admit
			}
			for _, a := range c.Args() {
				if b, ok := a.([]byte); ok {
					p.bytes += len(b)
					if len(b) == bigSize {
						p.big++
					}
				}
			}
		}
		mu.Lock()
		log = append(log, p)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond) // a slow Redis, so that calls queue up
		return next(ctx, cmds)
	}}
	s := openHooked(t, srv, uniquePrefix(), hook, queue.Options{Window: time.Hour})

	const n = 40
	var wg sync.WaitGroup
	for i := range n + 1 {
		wg.Go(func() {
			size := 100 << 10
			if i == n/2 {
				size = bigSize
			}
			e := &queue.Entry{Key: "k" + strconv.Itoa(i), Body: make([]byte, size)}
			if got, err := s.Admit(t.Context(), e); err != nil || got != queue.Accepted {
				t.Errorf("Admit(%d bytes) = %v, %v", size, got, err)
			}
		})
	}
	wg.Wait()
	shared, bigs := 0, 0
	for _, p := range log {
		if p.big > 0 {
			bigs++
			if p.cmds != 1 {
				t.Errorf("the %d-byte admit shared a pipeline with %d other admits", bigSize, p.cmds-1)
			}
			continue
		}
		if p.cmds > 1 {
			shared++
		}
		if p.bytes > redis.PipelineBytes {
			t.Errorf("a pipeline of %d admits carried %d bytes of bodies, more than %d", p.cmds, p.bytes, redis.PipelineBytes)
		}
	}
	if bigs != 1 {
		t.Errorf("the big admit went in %d pipelines, want 1", bigs)
	}
	if shared == 0 {
		t.Errorf("no pipeline carried more than one admit: %v", log)
	}
	t.Logf("%d pipelines, %d shared", len(log), shared)
}

// Claim hands out what it cannot read as Damaged instead of failing, and
// Bury buries it.
func TestRedisDamagedEntries(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	tag := "{" + prefix + "}"
	s := openRedis(t, srv, prefix, "c1", time.Minute, queue.Options{Window: time.Hour})
	raw := newClient(srv.Addr())
	defer raw.Close()
	ctx := t.Context()

	good := admit(t, s, "good")
	badID, err := raw.XAdd(ctx, &goredis.XAddArgs{Stream: tag + ":q", Values: []any{"k", "bad id", "i", "not-an-id"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	noBody, err := raw.XAdd(ctx, &goredis.XAddArgs{Stream: tag + ":q", Values: []any{"k", "no body"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	es, err := s.Claim(ctx, 10)
	if err != nil || len(es) != 3 {
		t.Fatalf("Claim = %v, %v; want 3 entries", es, err)
	}
	if es[0].ID != good.ID || es[0].Damaged != "" {
		t.Errorf("the good entry: %+v", es[0])
	}
	for i, sid := range []string{badID, noBody} {
		e := es[i+1]
		if want := entryID(sid); e.ID != want || e.Damaged == "" {
			t.Errorf("damaged entry %s: ID %q, Damaged %q; want ID %s and a reason", sid, e.ID, e.Damaged, want)
		}
		if err := s.Bury(ctx, e); err != nil {
			t.Fatalf("Bury(%s): %v", e.ID, err)
		}
		d, err := s.DeadEntry(ctx, e.ID)
		if err != nil || !strings.Contains(d.LastError, e.Damaged) {
			t.Errorf("dead letter of a damaged entry = %+v, %v; want the reason %q kept", d, err, e.Damaged)
		}
	}
	if st, err := s.Stats(ctx); err != nil || st.Backlog != 1 || st.Dead != 2 {
		t.Errorf("Stats = %+v, %v; want backlog 1, dead 2", st, err)
	}
}

// Keys are counted by the minute they expire in; past it they are not, and
// the next admit that counts a new minute deletes the stale fields.
func TestRedisKeysExpireByTheMinute(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	clock := storetest.NewClock()
	s := openRedis(t, srv, prefix, "c1", time.Minute, queue.Options{Window: time.Hour, Now: clock.Now})
	raw := newClient(srv.Addr())
	defer raw.Close()
	admit(t, s, "a")
	clock.Advance(2 * time.Minute)
	admit(t, s, "b")
	st, err := s.Stats(t.Context())
	if err != nil || st.Keys != 2 {
		t.Fatalf("Stats = %+v, %v; want 2 keys", st, err)
	}
	clock.Advance(time.Hour - time.Minute) // a expired a minute ago, b expires in a minute
	if st, err = s.Stats(t.Context()); err != nil || st.Keys != 1 {
		t.Fatalf("Stats an hour on = %+v, %v; want 1 key", st, err)
	}
	// Stats only reads; the next admit that counts a new minute deletes
	// the minutes gone by
	if n, err := raw.HLen(t.Context(), "{"+prefix+"}:kc").Result(); err != nil || n != 2 {
		t.Errorf("key count hash has %d fields, %v; want both, Stats deletes nothing", n, err)
	}
	admit(t, s, "c")
	if n, err := raw.HLen(t.Context(), "{"+prefix+"}:kc").Result(); err != nil || n != 2 {
		t.Errorf("key count hash has %d fields after an admit, %v; want b's and c's, a's gone", n, err)
	}
	if st, err = s.Stats(t.Context()); err != nil || st.Keys != 2 {
		t.Fatalf("Stats after the admit = %+v, %v; want 2 keys", st, err)
	}
}

// However short the window, a marker outlives the time in which an admit
// may run twice, since it is what tells the second run it ran.
func TestRedisMarkerTTLShortWindow(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	s := openRedis(t, srv, prefix, "c1", 0, queue.Options{Window: time.Second})
	admit(t, s, "k")
	c := newClient(srv.Addr())
	defer c.Close()
	ttl, err := c.PTTL(t.Context(), "{"+prefix+"}:seen:k").Result()
	if err != nil || ttl < 20*time.Second || ttl > 22*time.Second {
		t.Errorf("marker TTL with a 1s window = %s, %v; want about 21s", ttl, err)
	}
}

// Concurrent acks share their commands, and every acknowledged entry goes
// with its body, attempt and pending record.
func TestRedisAcksShareCommands(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	tag := "{" + prefix + "}"
	var mu sync.Mutex
	most := 0 // ids in one XDEL
	hook := pipelineHook{pipeline: func(next goredis.ProcessPipelineHook, ctx context.Context, cmds []goredis.Cmder) error {
		for _, c := range cmds {
			if c.Name() == "xdel" {
				mu.Lock()
				most = max(most, len(c.Args())-2)
				mu.Unlock()
			}
		}
		time.Sleep(20 * time.Millisecond) // a slow Redis, so that calls queue up
		return next(ctx, cmds)
	}}
	s := openHooked(t, srv, prefix, hook, queue.Options{Window: time.Hour})
	const n = 40
	for i := range n {
		admit(t, s, "k"+strconv.Itoa(i))
	}
	es, err := s.Claim(t.Context(), n)
	if err != nil || len(es) != n {
		t.Fatalf("Claim = %d entries, %v; want %d", len(es), err, n)
	}
	for _, e := range es[:n/2] { // some with an attempt recorded: retried, due at once
		e.Attempts, e.LastStatus = 1, 503
		if err := s.Retry(t.Context(), e, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if again, err := s.Claim(t.Context(), n); err != nil || len(again) != n/2 {
		t.Fatalf("Claim of the retried = %d entries, %v; want %d", len(again), err, n/2)
	}
	var wg sync.WaitGroup
	for _, e := range es {
		wg.Go(func() {
			if err := s.Ack(t.Context(), e.ID); err != nil {
				t.Errorf("Ack(%s): %v", e.ID, err)
			}
		})
	}
	wg.Wait()
	if most < 2 {
		t.Errorf("no XDEL carried more than one id (most %d): the acks did not share commands", most)
	}
	raw := newClient(srv.Addr())
	defer raw.Close()
	ctx := t.Context()
	if n, err := raw.XLen(ctx, tag+":q").Result(); err != nil || n != 0 {
		t.Errorf("XLEN after the acks = %d, %v; want 0", n, err)
	}
	if p, err := raw.XPending(ctx, tag+":q", "relay").Result(); err != nil || p.Count != 0 {
		t.Errorf("pending after the acks: %+v, %v; want none", p, err)
	}
	if n, err := raw.HLen(ctx, tag+":att").Result(); err != nil || n != 0 {
		t.Errorf("attempts left: %d, %v; want none", n, err)
	}
	if keys, err := raw.Keys(ctx, tag+":b:*").Result(); err != nil || len(keys) != 0 {
		t.Errorf("body keys left: %v, %v; want none", keys, err)
	}
}

// Large bodies go to and come from Redis within the store's bound on body
// bytes in flight: staged admits and body chunks beyond the first, however
// many run at once.
func TestRedisBodyBytesInFlight(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	const size = 1 << 20
	var mu sync.Mutex
	var now, most int // body bytes in Redis's hands
	track := func(n int, run func() error) error {
		mu.Lock()
		now += n
		most = max(most, now)
		mu.Unlock()
		time.Sleep(10 * time.Millisecond) // a slow Redis, so that calls pile up
		err := run()
		mu.Lock()
		now -= n
		mu.Unlock()
		return err
	}
	hook := pipelineHook{pipeline: func(next goredis.ProcessPipelineHook, ctx context.Context, cmds []goredis.Cmder) error {
		n := 0
		for _, c := range cmds {
			for _, a := range c.Args() {
				if b, ok := a.([]byte); ok && len(b) > redis.InlineBodyMax {
					n += len(b)
				}
			}
		}
		return track(n, func() error { return next(ctx, cmds) })
	}}
	chunks := processHook{process: func(next goredis.ProcessHook, ctx context.Context, cmd goredis.Cmder) error {
		args := cmd.Args()
		if cmd.Name() != "getrange" || len(args) != 4 {
			return next(ctx, cmd)
		}
		from, _ := args[2].(int64)
		to, _ := args[3].(int64)
		return track(int(to-from+1), func() error { return next(ctx, cmd) })
	}}
	c := newClient(srv.Addr())
	c.AddHook(hook)
	c.AddHook(chunks)
	s, err := redis.New(t.Context(), c, redis.Config{Prefix: uniquePrefix(), Consumer: "c1"}, queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })

	const n = 32 // reading one chunk each, more than the bound
	body := bytes.Repeat([]byte("b"), size)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			e := &queue.Entry{Key: "k" + strconv.Itoa(i), Body: body}
			if got, err := s.Admit(t.Context(), e); err != nil || got != queue.Accepted {
				t.Errorf("Admit = %v, %v", got, err)
			}
		})
	}
	wg.Wait()
	admitted := most
	most = 0
	es, err := s.Claim(t.Context(), n)
	if err != nil || len(es) != n {
		t.Fatalf("Claim = %d entries, %v", len(es), err)
	}
	for _, e := range es {
		wg.Go(func() {
			if b, err := s.Body(t.Context(), e.ID); err != nil || len(b) != size {
				t.Errorf("Body(%s) = %d bytes, %v", e.ID, len(b), err)
			}
		})
	}
	wg.Wait()
	t.Logf("most body bytes in flight: admitting %d, reading %d (bound %d)", admitted, most, redis.BodyBytesInFlight)
	if admitted > redis.BodyBytesInFlight || most > redis.BodyBytesInFlight {
		t.Errorf("up to %d body bytes in flight admitting, %d reading; want at most %d", admitted, most, redis.BodyBytesInFlight)
	}
	if admitted < size || most < size {
		t.Errorf("admitting %d, reading %d body bytes in flight at most: the test saw no large body go", admitted, most)
	}
}

// A claim takes over idle entries in batches of its own (XCLAIM of at most
// a hundred ids), all of them, oldest first, before new ones.
func TestRedisClaimTakesOverManyOldestFirst(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	a := openRedis(t, srv, prefix, "a", time.Minute, queue.Options{Window: time.Hour})
	b := openRedis(t, srv, prefix, "b", time.Minute, queue.Options{Window: time.Hour})
	const n = 250
	want := make([]string, 0, n+1)
	for i := range n {
		want = append(want, admit(t, a, "k"+strconv.Itoa(i)).ID)
	}
	held := claimIDs(t, a, n)
	if len(held) != n {
		t.Fatalf("a claimed %d, want %d", len(held), n)
	}
	fresh := admit(t, a, "fresh") // new, never claimed
	want = append(want, fresh.ID)
	if err := a.Release(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	got := claimIDs(t, b, n+10)
	if !slices.Equal(got, want) {
		t.Fatalf("b claimed %d entries (first %v), want the %d released ones oldest first, then the new one", len(got), got[:min(3, len(got))], n)
	}
	if more := claimIDs(t, a, 10); len(more) != 0 {
		t.Errorf("a claimed %v after b took everything", more)
	}
}

// processHook lets a test meddle with single commands.
type processHook struct {
	process func(next goredis.ProcessHook, ctx context.Context, cmd goredis.Cmder) error
}

func (h processHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h processHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error { return h.process(next, ctx, cmd) }
}
func (h processHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

// A claim that ran but whose reply was lost (Redis killed after running it,
// a read timeout) does not strand what it took until the visibility
// timeout: the next claim hands it out.
func TestRedisClaimReplyLost(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	script, _, _ := redis.ClaimScript(nil, 0, "")
	var lose atomic.Bool
	errLost := errors.New("connection reset by peer (test)")
	hook := processHook{process: func(next goredis.ProcessHook, ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		if args := cmd.Args(); len(args) > 1 && args[1] == script.Hash() && lose.CompareAndSwap(true, false) {
			cmd.SetErr(errLost) // it ran; the reply never came
			return errLost
		}
		return err
	}}
	s := openHooked(t, srv, uniquePrefix(), hook, queue.Options{Window: time.Hour})
	a := admit(t, s, "a")
	b := admit(t, s, "b")

	lose.Store(true)
	if es, err := s.Claim(t.Context(), 10); err == nil {
		t.Fatalf("Claim with its reply lost = %v, want an error", es)
	}
	c := admit(t, s, "c")
	got := claimIDs(t, s, 10)
	if len(got) != 3 || got[0] != a.ID || got[1] != b.ID || got[2] != c.ID {
		t.Fatalf("Claim after a lost reply = %v, want %v", got, []string{a.ID, b.ID, c.ID})
	}
	if got := claimIDs(t, s, 10); len(got) != 0 {
		t.Fatalf("Claim again = %v, want nothing", got)
	}
	// the same holds with less room than the lost claim took
	d := admit(t, s, "d")
	e := admit(t, s, "e")
	lose.Store(true)
	if _, err := s.Claim(t.Context(), 10); err == nil {
		t.Fatal("Claim with its reply lost: no error")
	}
	if got := claimIDs(t, s, 1); len(got) != 1 || got[0] != d.ID {
		t.Fatalf("Claim(1) after a lost reply = %v, want [%s]", got, d.ID)
	}
	if got := claimIDs(t, s, 10); len(got) != 1 || got[0] != e.ID {
		t.Fatalf("the next Claim = %v, want [%s], released by the one before", got, e.ID)
	}
}

// Just after Redis came back, go-redis fails some dials at once for up to a
// second: an admit that meets one waits for Redis rather than answer 503,
// while with Redis down it fails at once.
func TestRedisAdmitRidesOutFailedDials(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	var failing atomic.Int32 // pipelines still to fail as an undialable Redis does
	hook := pipelineHook{pipeline: func(next goredis.ProcessPipelineHook, ctx context.Context, cmds []goredis.Cmder) error {
		if failing.Add(-1) >= 0 {
			err := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
		failing.Store(0)
		return next(ctx, cmds)
	}}
	s := openHooked(t, srv, uniquePrefix(), hook, queue.Options{Window: time.Hour})

	// down: the admit fails at once
	failing.Store(1000)
	start := time.Now()
	if got, err := s.Admit(t.Context(), &queue.Entry{Key: "down"}); err == nil {
		t.Fatalf("Admit with every dial failing = %v, want an error", got)
	}
	if took := time.Since(start); took > 200*time.Millisecond {
		t.Errorf("Admit with Redis down took %s, want a quick failure", took)
	}
	// back: one call gets through, then a few dials fail
	failing.Store(0)
	admit(t, s, "back")
	failing.Store(3)
	admit(t, s, "flap")
	if n := failing.Load(); n != 0 {
		t.Errorf("%d failed dials left", n)
	}
}

// Large bodies are read a chunk at a time and come back whole.
func TestRedisLargeBodyInChunks(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openRedis(t, srv, uniquePrefix(), "c1", time.Minute, queue.Options{Window: time.Hour})
	body := make([]byte, 2<<20+12345)
	for i := range body {
		body[i] = byte(i*31 + i>>10)
	}
	e := &queue.Entry{Key: "big", Body: body}
	if got, err := s.Admit(t.Context(), e); err != nil || got != queue.Accepted {
		t.Fatalf("Admit = %v, %v", got, err)
	}
	es, err := s.Claim(t.Context(), 1)
	if err != nil || len(es) != 1 || es[0].BodySize != len(body) {
		t.Fatalf("Claim = %v, %v; want the entry with BodySize %d", es, err, len(body))
	}
	got, err := s.Body(t.Context(), e.ID)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("Body: %d bytes, %v; want the %d admitted", len(got), err, len(body))
	}
	if err := s.Bury(t.Context(), es[0]); err != nil {
		t.Fatal(err)
	}
	d, err := s.DeadEntry(t.Context(), e.ID)
	if err != nil || !bytes.Equal(d.Body, body) {
		t.Fatalf("DeadEntry: %d bytes, %v; want the %d admitted", len(d.Body), err, len(body))
	}
}

// A pause is kept in Redis: another consumer opened on the same prefix
// (another instance, or this one restarted) sees it.
func TestRedisPauseSurvivesReopen(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	opts := queue.Options{Window: time.Hour}
	first := openRedis(t, srv, prefix, "a", 0, opts)
	storetest.PauseSurvives(t, first, func() queue.Store {
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		return openRedis(t, srv, prefix, "b", 0, opts)
	})
}
