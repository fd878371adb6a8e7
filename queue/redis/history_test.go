package redis_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

func historyOpts(clock *storetest.Clock) queue.Options {
	return queue.Options{Window: time.Hour, History: 24 * time.Hour, Now: clock.Now}
}

// The records are in Redis: another process on the same Redis finds them
// and adds to them.
func TestRedisHistorySurvives(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix, clock := uniquePrefix(), storetest.NewClock()
	first := openRedis(t, srv, prefix, "c1", 0, historyOpts(clock))
	storetest.HistorySurvives(t, clock, first, func() queue.Store {
		return openRedis(t, srv, prefix, "c2", 0, historyOpts(clock))
	})
}

func claimOne(t *testing.T, c queue.Claimer) *queue.Entry {
	t.Helper()
	es, err := c.Claim(t.Context(), 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("Claim = %d entries, %v; want 1", len(es), err)
	}
	return es[0]
}

// Two instances recording attempts of the deliveries of one payload at
// the same time each keep what the other recorded.
func TestRedisHistoryAttemptsFromTwoInstances(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix, clock := uniquePrefix(), storetest.NewClock()
	stores := []queue.Store{
		openRedis(t, srv, prefix, "c1", 0, historyOpts(clock)),
		openRedis(t, srv, prefix, "c2", 0, historyOpts(clock)),
	}
	var dests []string
	for i := range 8 {
		dests = append(dests, "d"+strconv.Itoa(i))
	}
	e := &queue.Entry{Key: "k", Body: []byte("{}"), Destinations: dests}
	if got, err := stores[0].Admit(t.Context(), e); err != nil || got != queue.Accepted {
		t.Fatalf("Admit = %v, %v", got, err)
	}
	const failures = 20
	var wg sync.WaitGroup
	for i, d := range dests {
		lane := stores[i%2].Lane(d)
		c := claimOne(t, lane)
		wg.Go(func() {
			rec := lane.(queue.Recorder)
			for j := range failures + 1 {
				state := queue.StateRetrying
				if j == failures {
					state = queue.StateDelivered
				}
				a := queue.Attempt{Destination: d, At: clock.Now(), Status: 500 + j, DurationMS: 1}
				if err := rec.Attempted(context.Background(), c, a, state); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	r, err := stores[1].Event(t.Context(), e.ID)
	if err != nil {
		t.Fatal(err)
	}
	total := len(dests) * (failures + 1)
	if r.State != queue.StateDelivered || r.Done.IsZero() || len(r.Attempts) != queue.MaxRecordAttempts ||
		r.AttemptsLeftOut != total-queue.MaxRecordAttempts {
		t.Errorf("record %s, done %v, %d attempts kept, %d left out; want delivered, done, %d, %d",
			r.State, r.Done, len(r.Attempts), r.AttemptsLeftOut, queue.MaxRecordAttempts, total-queue.MaxRecordAttempts)
	}
	for _, d := range r.Destinations {
		if d.State != queue.StateDelivered || d.Attempts != failures+1 {
			t.Errorf("delivery %s: %s after %d attempts, want delivered after %d", d.Destination, d.State, d.Attempts, failures+1)
		}
	}
}

// Once its deliveries are done and its record trimmed, a payload leaves
// nothing behind in Redis: no body, record, reference count or size.
func TestRedisHistoryLeavesNothing(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix, clock := uniquePrefix(), storetest.NewClock()
	s := openRedis(t, srv, prefix, "c1", 0, historyOpts(clock))
	ctx := t.Context()
	one := &queue.Entry{Key: "one", Body: []byte("one"), Destinations: []string{"app"}}
	two := &queue.Entry{Key: "two", Body: []byte("two"), Destinations: []string{"app", "archive"}}
	for _, e := range []*queue.Entry{one, two} {
		if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
			t.Fatalf("Admit = %v, %v", got, err)
		}
	}
	app, archive := s.Lane("app"), s.Lane("archive")
	done := func(lane queue.Claimer, state string) *queue.Entry {
		t.Helper()
		c := claimOne(t, lane)
		a := queue.Attempt{Destination: c.Destination, At: clock.Now(), Status: 200}
		if err := lane.(queue.Recorder).Attempted(ctx, c, a, state); err != nil {
			t.Fatal(err)
		}
		var err error
		if state == queue.StateDead {
			err = lane.Bury(ctx, c)
		} else {
			err = lane.Ack(ctx, c.ID) // one's is a plain ack
		}
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	done(app, queue.StateDelivered)
	if _, err := app.Body(ctx, one.ID); err == nil {
		t.Error("Body of a delivered delivery whose record keeps the body: no error, want ErrNotFound")
	}
	dead := done(app, queue.StateDead)
	done(archive, queue.StateDelivered)
	if n, err := s.Resend(ctx, two.ID); err != nil || n != 1 {
		t.Fatalf("Resend = %d, %v; want 1", n, err)
	}
	done(archive, queue.StateDelivered)
	if err := s.DeleteDead(ctx, dead.ID); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*queue.Entry{one, two} {
		if r, err := s.Event(ctx, e.ID); err != nil || string(r.Body) != string(e.Body) {
			t.Fatalf("Event(%s) = %v; want its record with its body", e.Key, err)
		}
	}
	clock.Advance(24 * time.Hour)
	if n, err := app.(queue.Recorder).TrimHistory(ctx, 10); err != nil || n != 2 {
		t.Fatalf("TrimHistory = %d, %v; want 2", n, err)
	}
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer raw.Close()
	tag := "{" + prefix + "}"
	keys, err := raw.Keys(ctx, tag+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		rest := strings.TrimPrefix(k, tag+":")
		switch {
		case strings.HasPrefix(rest, "b:"), strings.HasPrefix(rest, "h:"), rest == "hist", rest == "hdone", rest == "rc", rest == "sz":
			t.Errorf("left behind: %s", k)
		case rest == "stored":
			if n, _ := raw.Get(ctx, k).Int(); n != 0 {
				t.Errorf("stored %d, want 0", n)
			}
		}
	}
}

// A record takes less than queue.RecordCharge in Redis, with the most
// attempts it keeps; with 3 attempts of a 300-byte payload it takes what
// the test logs (go test -v -run RecordMemory).
func TestRedisRecordMemory(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix, clock := uniquePrefix(), storetest.NewClock()
	s := openRedis(t, srv, prefix, "c1", 0, historyOpts(clock))
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer raw.Close()
	ctx := t.Context()
	body := []byte(`{"data":[{"taskType":"imageInference","taskUUID":"a770f077-f413-47de-9dac-be0b26a35da6",` +
		`"imageUUID":"77da2d99-a6d3-44d9-b8c0-ae9fb06b6200","imageURL":"https://im.runware.ai/image/ws/0.5/ii/` +
		`77da2d99-a6d3-44d9-b8c0-ae9fb06b6200.jpg","seed":1234567890,"NSFWContent":false,"cost":0.0013}]}`)
	meta := queue.RequestMeta{ContentType: "application/json", UserAgent: "Runware", ForwardedFor: "192.0.2.1"}
	measure := func(attempts int) int64 {
		e := &queue.Entry{Key: "a770f077-f413-47de-9dac-be0b26a35da6:" + strconv.Itoa(attempts), Body: body,
			Request: meta, Destinations: []string{"app"}}
		if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
			t.Fatalf("Admit = %v, %v", got, err)
		}
		lane := s.Lane("app")
		c := claimOne(t, lane)
		for i := range attempts {
			state, a := queue.StateRetrying, queue.Attempt{Destination: "app", At: clock.Now(), Status: 503,
				DurationMS: 1234, Error: "upstream answered 503"}
			if i == attempts-1 {
				state, a.Status, a.Error = queue.StateDelivered, 200, ""
			}
			if err := lane.(queue.Recorder).Attempted(ctx, c, a, state); err != nil {
				t.Fatal(err)
			}
		}
		if err := lane.Ack(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		tag := "{" + prefix + "}"
		record, err := raw.MemoryUsage(ctx, tag+":h:"+e.ID).Result()
		if err != nil {
			t.Fatal(err)
		}
		index := indexCost(t, raw, tag)
		t.Logf("%d attempts: record hash %d bytes (MEMORY USAGE), index entries about %d", attempts, record, index)
		if record+index >= queue.RecordCharge {
			t.Errorf("a record with %d attempts takes %d bytes, over RecordCharge", attempts, record+index)
		}
		return record
	}
	measure(3)
	measure(queue.MaxRecordAttempts + 5)
}

// indexCost is about what a record costs in {p}:hist and {p}:hdone: what
// a sorted set of 1000 such ids costs per id, twice.
func indexCost(t *testing.T, raw *goredis.Client, tag string) int64 {
	ctx := t.Context()
	key := tag + ":probe"
	defer raw.Del(ctx, key)
	for i := range 1000 {
		raw.ZAdd(ctx, key, goredis.Z{Score: float64(1741964966000 + i), Member: fmt.Sprintf("%016d-%010d", 1741964966000+i, 0)})
	}
	n, err := raw.Do(ctx, "MEMORY", "USAGE", key, "SAMPLES", 0).Int64()
	if err != nil {
		t.Fatal(err)
	}
	return 2 * n / 1000
}

// A delivery recorded delivered whose ack has not landed yet is still in
// its lane: Resend leaves it there, rather than queue it twice.
func TestRedisResendWaitsForTheAck(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	clock := storetest.NewClock()
	s := openRedis(t, srv, uniquePrefix(), "c1", 0, historyOpts(clock))
	ctx := t.Context()
	for _, dests := range [][]string{{"app"}, {"app", "archive"}} {
		e := &queue.Entry{Key: strings.Join(dests, ","), Body: []byte("{}"), Destinations: dests}
		if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
			t.Fatalf("Admit = %v, %v", got, err)
		}
		lane := s.Lane("app")
		c := claimOne(t, lane)
		a := queue.Attempt{Destination: "app", At: clock.Now(), Status: 200}
		if err := lane.(queue.Recorder).Attempted(ctx, c, a, queue.StateDelivered); err != nil {
			t.Fatal(err)
		}
		if n, err := s.Resend(ctx, e.ID); err != nil || n != 0 {
			t.Errorf("%v: Resend before the ack = %d, %v; want 0", dests, n, err)
		}
		if err := lane.Ack(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		if n, err := s.Resend(ctx, e.ID); err != nil || n != 1 {
			t.Errorf("%v: Resend after the ack = %d, %v; want 1", dests, n, err)
		}
		if again := claimOne(t, lane); again.ID != c.ID {
			t.Errorf("%v: resent %s, want %s", dests, again.ID, c.ID)
		}
	}
}
