package ratelimit

import (
	"slices"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
)

// client builds a client the way the Redis store does (a UniversalClient,
// no retries), one per "instance".
func client(t *testing.T, addr string) goredis.UniversalClient {
	c := goredis.NewUniversalClient(&goredis.UniversalOptions{
		Addrs: []string{addr}, MaxRetries: -1, DisableIdentity: true,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRedisSharedSpread: two instances (two clients, two limiters) on one
// key start 30 attempts at 5/s between them: spread over at least 4 s and
// never more than 7 within one second. It takes about 6 s of real time.
func TestRedisSharedSpread(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	const key = "{webhook_relay:hooks}:rate:archive"
	r := Rate{5, time.Second}
	var (
		mu     sync.Mutex
		starts []time.Time
		wg     sync.WaitGroup
	)
	for range 2 {
		l := NewRedis(client(t, srv.Addr()), key, r)
		wg.Go(func() {
			for n := 0; n < 15; {
				wait, err := l.Take(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				if wait > 0 {
					if wait > r.Interval() {
						t.Errorf("told to wait %s, more than the interval", wait)
					}
					time.Sleep(wait)
					continue
				}
				mu.Lock()
				starts = append(starts, time.Now())
				mu.Unlock()
				n++
			}
		})
	}
	wg.Wait()
	slices.SortFunc(starts, time.Time.Compare)
	if len(starts) != 30 {
		t.Fatalf("%d starts", len(starts))
	}
	checkSpread(t, starts, 4*time.Second, 7)
	// The state is under the key given, within the relay's hash tag.
	if out, err := redistest.Cmd(srv.Addr(), "EXISTS", key); err != nil || out != "1\n" {
		t.Errorf("EXISTS %s: %q, %v", key, out, err)
	}
}

// TestRedisDown: without Redis, Take fails; it neither panics nor lets an
// attempt start.
func TestRedisDown(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	l := NewRedis(client(t, srv.Addr()), "{p}:rate:d", Rate{5, time.Second})
	if w, err := l.Take(t.Context()); w != 0 || err != nil {
		t.Fatalf("first Take: %s, %v", w, err)
	}
	srv.Kill()
	w, err := l.Take(t.Context())
	if err == nil {
		t.Fatalf("Take with Redis down: %s, no error", w)
	}
	t.Log(err)
	srv.Restart()
	// Back: the state is gone with the server (no persistence here), so a
	// start is free again.
	if w, err := l.Take(t.Context()); w != 0 || err != nil {
		t.Fatalf("Take after restart: %s, %v", w, err)
	}
}
