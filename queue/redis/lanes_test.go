package redis_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/redis"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

// openClocked opens a store on the clock, closed when t ends.
func openClocked(t *testing.T, srv *redistest.Server, prefix, consumer string, visibility, ttl time.Duration, clock *storetest.Clock) *redis.Store {
	t.Helper()
	s, err := redis.New(context.Background(), newClient(srv.Addr()), redis.Config{
		Prefix: prefix, Consumer: consumer, VisibilityTimeout: visibility, LivenessTTL: ttl,
	}, queue.Options{Window: time.Hour, Now: clock.Now})
	if err != nil {
		t.Fatalf("redis.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// groupConsumers lists the consumers of the group on a lane's stream.
func groupConsumers(t *testing.T, raw goredis.UniversalClient, stream string) []string {
	t.Helper()
	infos, err := raw.XInfoConsumers(t.Context(), stream, "relay").Result()
	if err != nil {
		t.Fatalf("XINFO CONSUMERS %s: %v", stream, err)
	}
	var names []string
	for _, i := range infos {
		names = append(names, i.Name)
	}
	return names
}

// A store killed holding a delivery of a payload fanned out loses it, in
// its lane, to the store that sees its liveness key expire; the other
// lane's delivery and the shared body are there too, and the dead consumer
// leaves every lane's group.
func TestRedisLanesSurviveTakeover(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	raw := newClient(srv.Addr())
	defer raw.Close()
	prefix := uniquePrefix()
	tag := "{" + prefix + "}"
	clock := storetest.NewClock()
	const ttl = 600 * time.Millisecond
	a := openClocked(t, srv, prefix, "a", time.Hour, ttl, clock)
	storetest.LanesSurvive(t, clock, a, func() queue.Store {
		a.StopLiveness() // killed: its key expires, nothing else happens
		b := openClocked(t, srv, prefix, "b", time.Hour, ttl, clock)
		// b's liveness rounds take over what a held, in every lane, then
		// drop a from the consumers keeping a key
		testkit.Eventually(t, 10*time.Second, func() bool {
			n, err := raw.HExists(t.Context(), tag+":lv", "a").Result()
			return err == nil && !n
		}, "a is still listed as keeping a liveness key")
		return b
	})
	for _, stream := range []string{tag + ":q", tag + ":q:app", tag + ":q:archive"} {
		if names := groupConsumers(t, raw, stream); slices.Contains(names, "a") {
			t.Errorf("%s: consumers %v, want a gone", stream, names)
		}
	}
}

// The same after the visibility timeout, which any store's claim in the
// lane enforces, with the first store closed (its liveness key left to
// expire an hour later).
func TestRedisLanesSurviveVisibilityTimeout(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	clock := storetest.NewClock()
	const visibility = 300 * time.Millisecond
	a := openClocked(t, srv, prefix, "a", visibility, time.Hour, clock)
	storetest.LanesSurvive(t, clock, a, func() queue.Store {
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(visibility + 100*time.Millisecond) // Redis's own idle clock
		return openClocked(t, srv, prefix, "b", visibility, time.Hour, clock)
	})
}

// A payload fanned out is stored once: one body key (a large body staged
// once and renamed into place), one size, a reference per delivery; the
// last ack frees them all.
func TestRedisFanOutStoresOnce(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	raw := newClient(srv.Addr())
	defer raw.Close()
	ctx := t.Context()
	for _, n := range []int{100, redis.InlineBodyMax + 1} {
		t.Run(strconv.Itoa(n)+" bytes", func(t *testing.T) {
			prefix := uniquePrefix()
			tag := "{" + prefix + "}"
			s := openRedis(t, srv, prefix, "c1", time.Minute, queue.Options{Window: time.Hour})
			dests := []string{"app", "archive", "x:q"} // a lane named like a key suffix
			e := &queue.Entry{Key: "k", Body: bytes.Repeat([]byte("b"), n), Destinations: dests}
			if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
				t.Fatalf("Admit = %v, %v", got, err)
			}
			bodies, err := raw.Keys(ctx, tag+":b:*").Result()
			if err != nil || len(bodies) != 1 || bodies[0] != tag+":b:"+e.ID {
				t.Fatalf("body keys %v, %v; want the one %s", bodies, err, tag+":b:"+e.ID)
			}
			if staged, _ := raw.Keys(ctx, tag+":in:*").Result(); len(staged) != 0 {
				t.Errorf("staged bodies left: %v", staged)
			}
			if refs, err := raw.HGet(ctx, tag+":rc", e.ID).Result(); err != nil || refs != "3" {
				t.Errorf("references %q, %v; want 3", refs, err)
			}
			for i, d := range dests {
				stream := tag + ":q:" + d
				if l, err := raw.XLen(ctx, stream).Result(); err != nil || l != 1 {
					t.Fatalf("XLEN %s = %d, %v; want 1", stream, l, err)
				}
				lane := s.Lane(d)
				es, err := lane.Claim(ctx, 10)
				if err != nil || len(es) != 1 || es[0].ID != queue.DeliveryID(e.ID, d, false) || es[0].BodySize != n {
					t.Fatalf("Lane(%s).Claim = %v, %v; want its delivery of %d bytes", d, es, err, n)
				}
				if err := lane.Ack(ctx, es[0].ID); err != nil {
					t.Fatal(err)
				}
				if i < len(dests)-1 {
					if k, _ := raw.Exists(ctx, tag+":b:"+e.ID).Result(); k != 1 {
						t.Fatalf("the body went with the delivery to %s, before the last", d)
					}
				}
			}
			left, err := raw.Keys(ctx, tag+":b:*").Result()
			if err != nil || len(left) != 0 {
				t.Errorf("body keys after the last ack: %v, %v", left, err)
			}
			for _, h := range []string{":rc", ":sz"} {
				if l, err := raw.HLen(ctx, tag+h).Result(); err != nil || l != 0 {
					t.Errorf("%s has %d fields, %v; want none", h, l, err)
				}
			}
			if st, err := s.Stats(ctx); err != nil || st.Stored != 0 || st.Backlog != 0 || st.Lanes != nil {
				t.Errorf("Stats = %+v, %v; want nothing", st, err)
			}
		})
	}
}

// An admit fanned out that runs twice (its reply lost and sent again)
// stores each delivery once; and stream ids come from one source, so an
// id used in one lane is never used in another, however the admits to
// one lane, to the other and to both interleave within a millisecond.
func TestRedisFanOutAdmitRunsTwice(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	raw := newClient(srv.Addr())
	defer raw.Close()
	ctx := t.Context()
	prefix := uniquePrefix()
	tag := "{" + prefix + "}"
	s := openRedis(t, srv, prefix, "c1", time.Minute, queue.Options{Window: time.Hour})
	e := &queue.Entry{Key: "twice", Body: []byte("{}"), Destinations: []string{"app", "archive"}}
	now := time.Now()
	first, err := redis.AdmitOnce(ctx, s, raw, e, "token-1", now)
	if err != nil {
		t.Fatal(err)
	}
	second, err := redis.AdmitOnce(ctx, s, raw, e, "token-1", now)
	if err != nil || fmt.Sprint(first) != fmt.Sprint(second) {
		t.Fatalf("the same admit twice answered %v then %v, %v; want the same", first, second, err)
	}
	const rounds = 50
	for i := range rounds {
		for _, dests := range [][]string{{"archive"}, {"app"}, {"app", "archive"}} {
			e := &queue.Entry{Key: fmt.Sprint(i, dests), Body: []byte("{}"), Destinations: dests}
			if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
				t.Fatalf("Admit(%s) = %v, %v", e.Key, got, err)
			}
		}
	}
	lanes := make(map[string][]string) // stream id -> lanes it is used in
	for _, d := range []string{"app", "archive"} {
		msgs, err := raw.XRange(ctx, tag+":q:"+d, "-", "+").Result()
		if err != nil || len(msgs) != 1+2*rounds {
			t.Fatalf("lane %s: %d entries, %v; want %d (the payload admitted twice once)", d, len(msgs), err, 1+2*rounds)
		}
		for _, m := range msgs {
			lanes[m.ID] = append(lanes[m.ID], d)
		}
	}
	if got := len(lanes[first[1].(string)]); got != 2 {
		t.Errorf("the payload admitted twice: stream id %s in %d lanes, want 2", first[1], got)
	}
	if len(lanes) != 1+3*rounds {
		t.Errorf("%d distinct stream ids, want %d: one per payload", len(lanes), 1+3*rounds)
	}
}

// A delivery sharing its body is queued only while its own entry is: its
// body is not found once it is acked, though the other delivery's is, and
// is found again once it is replayed.
func TestRedisFanOutBodyOfDelivery(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx := t.Context()
	prefix := uniquePrefix()
	s := openRedis(t, srv, prefix, "c1", time.Minute, queue.Options{Window: time.Hour})
	e := &queue.Entry{Key: "k", Body: []byte(`{"k":1}`), Destinations: []string{"app", "archive"}}
	if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
		t.Fatalf("Admit = %v, %v", got, err)
	}
	app, archive := s.Lane("app"), s.Lane("archive")
	claim := func(l queue.Claimer) *queue.Entry {
		t.Helper()
		es, err := l.Claim(ctx, 10)
		if err != nil || len(es) != 1 {
			t.Fatalf("Claim = %v, %v; want one", es, err)
		}
		return es[0]
	}
	wantBody := func(l queue.Claimer, id string, want error) {
		t.Helper()
		body, err := l.(queue.BodyReader).ReadBody(ctx, id)
		if !errors.Is(err, want) || want == nil && string(body) != string(e.Body) {
			t.Fatalf("ReadBody(%s) = %q, %v; want %v", id, body, err, want)
		}
	}
	a, b := claim(app), claim(archive)
	if err := app.Ack(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	wantBody(app, a.ID, queue.ErrNotFound)
	wantBody(archive, b.ID, nil)
	if err := archive.Bury(ctx, b); err != nil {
		t.Fatal(err)
	}
	wantBody(archive, b.ID, queue.ErrNotFound)
	if n, err := s.Replay(ctx, nil); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	back := claim(archive)
	wantBody(archive, back.ID, nil)
	// where it went is in Redis too, for a store that did not claim it
	other := openRedis(t, srv, prefix, "c2", time.Minute, queue.Options{Window: time.Hour})
	wantBody(other.Lane("archive"), back.ID, nil)
	if err := archive.Ack(ctx, back.ID); err != nil {
		t.Fatal(err)
	}
	wantBody(other.Lane("archive"), back.ID, queue.ErrNotFound)
}

// Each consumer claims from a lane what no other holds.
func TestRedisLaneConsumersDisjoint(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := uniquePrefix()
	opts := queue.Options{Window: time.Hour}
	a := openRedis(t, srv, prefix, "a", time.Minute, opts)
	b := openRedis(t, srv, prefix, "b", time.Minute, opts)
	const n = 100
	for i := range n {
		e := &queue.Entry{Key: "k" + strconv.Itoa(i), Body: []byte("{}"), Destinations: []string{"app", "archive"}}
		if got, err := a.Admit(t.Context(), e); err != nil || got != queue.Accepted {
			t.Fatalf("Admit = %v, %v", got, err)
		}
	}
	storetest.ClaimsDisjoint(t, n, 7, a.Lane("app"), b.Lane("app"), a.Lane("app"))
	es, err := b.Lane("archive").Claim(t.Context(), 2*n)
	if err != nil || len(es) != n {
		t.Fatalf("archive: claimed %d, %v; want all %d, untouched by app's claims", len(es), err, n)
	}
	for _, e := range es {
		if !strings.HasSuffix(e.ID, "~archive") {
			t.Fatalf("archive handed out %s", e.ID)
		}
	}
}

// A destination named twice gets one delivery: a second under the same id
// would fail the admit halfway.
func TestRedisFanOutRepeatedDestination(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx := t.Context()
	s := openRedis(t, srv, uniquePrefix(), "c1", time.Minute, queue.Options{Window: time.Hour})
	e := &queue.Entry{Key: "k", Body: []byte("{}"), Destinations: []string{"app", "archive", "app"}}
	if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
		t.Fatalf("Admit to app, archive, app = %v, %v; want accepted", got, err)
	}
	st, err := s.Stats(ctx)
	if err != nil || st.Backlog != 2 || st.Lanes["app"] != 1 || st.Lanes["archive"] != 1 {
		t.Fatalf("Stats = %+v, %v; want one delivery in app and one in archive", st, err)
	}
	for _, d := range []string{"app", "archive"} {
		es, err := s.Lane(d).Claim(ctx, 10)
		if err != nil || len(es) != 1 || es[0].ID != queue.DeliveryID(e.ID, d, false) {
			t.Fatalf("Lane(%s).Claim = %v, %v", d, es, err)
		}
	}
}
