package queue_test

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.etcd.io/bbolt"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// markerCount is how many markers the marker-size benchmarks hold: enough
// that per-structure overhead is spread thin.
const markerCount = 5000

// runwareKey is a dedupe key of the shape the runware source makes: task
// UUID and output UUID.
func runwareKey(i int) string {
	return fmt.Sprintf("rw:%08x-1111-4222-8333-%012x/%08x-aaaa-4bbb-8ccc-%012x", i, i, i, i)
}

// admitAndDeliver admits markerCount payloads, 32 at a time so that bolt's
// commits are shared, and delivers them, so that only their markers stay.
func admitAndDeliver(b *testing.B, s queue.Store) {
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := w; i < markerCount; i += 32 {
				e := &queue.Entry{Key: runwareKey(i), Body: []byte(`{}`)}
				if a, err := s.Admit(ctx, e); err != nil || a != queue.Accepted {
					b.Errorf("Admit: %v %v", a, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	for {
		es, err := s.Claim(ctx, 1000)
		if err != nil {
			b.Fatal(err)
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if err := s.Ack(ctx, e.ID); err != nil {
				b.Fatal(err)
			}
		}
	}
	st, err := s.Stats(ctx)
	if err != nil || st.Keys != markerCount || st.Backlog != 0 {
		b.Fatalf("Stats = %+v, %v; want %d keys and an empty backlog", st, err, markerCount)
	}
}

// BenchmarkMarkerBytes reports what one dedupe marker of a Runware key
// costs each store (bytes/marker), for sizing window against a rate. It
// measures once whatever b.N is: the time per op is not the point.
func BenchmarkMarkerBytes(b *testing.B) {
	opts := queue.Options{Window: 24 * time.Hour}
	b.Run("memory", func(b *testing.B) {
		{
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			s := queue.NewMemory(opts)
			admitAndDeliver(b, s)
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/markerCount, "bytes/marker")
			runtime.KeepAlive(s)
		}
	})
	b.Run("bolt", func(b *testing.B) {
		{
			path := filepath.Join(b.TempDir(), "relay.db")
			s := openBolt(b, path, opts)
			admitAndDeliver(b, s)
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
			// the pages the two marker buckets use, not the file's size,
			// which also holds the freed pages of the delivered payloads
			db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			used := 0
			_ = db.View(func(tx *bbolt.Tx) error {
				for _, name := range []string{"seen", "expiry"} {
					st := tx.Bucket([]byte(name)).Stats()
					used += st.BranchInuse + st.LeafInuse
				}
				return nil
			})
			b.ReportMetric(float64(used)/markerCount, "bytes/marker")
		}
	})
	b.Run("redis", func(b *testing.B) {
		srv := redistest.Start(b, redistest.Options{})
		{
			const i = 0
			probe := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
			ctx := context.Background()
			before := usedMemory(b, probe)
			s := openRedis(b, srv, fmt.Sprintf("markers%d", i), "c", time.Minute, opts)
			admitAndDeliver(b, s)
			b.ReportMetric(float64(usedMemory(b, probe)-before)/markerCount, "bytes/marker")
			_ = probe.FlushAll(ctx).Err()
			_ = probe.Close()
		}
	})
}

func usedMemory(b *testing.B, c *goredis.Client) int64 {
	info, err := c.InfoMap(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	var used int64
	fmt.Sscan(info["Memory"]["used_memory"], &used)
	return used
}
