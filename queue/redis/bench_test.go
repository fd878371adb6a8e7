package redis_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

// BenchmarkAdmit: the Redis store's admit (ack) latency at 1, 16 and 64
// concurrent admits, with appendfsync always like bolt's fsync per commit.
func BenchmarkAdmit(b *testing.B) {
	storetest.BenchConcurrency(b, func(b *testing.B) queue.Store {
		srv := redistest.Start(b, redistest.Options{AOF: true})
		return openRedis(b, srv, uniquePrefix(), "c1", 0, queue.Options{Window: 24 * time.Hour})
	})
}

// BenchmarkMarkerBytes reports what one dedupe marker of a Runware key costs
// Redis (bytes/marker, growth of used_memory), for sizing window against a
// rate. It measures once whatever b.N is.
func BenchmarkMarkerBytes(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	probe := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer probe.Close()
	before := usedMemory(b, probe)
	s := openRedis(b, srv, "markers", "c", time.Minute, queue.Options{Window: 24 * time.Hour})
	storetest.FillMarkers(b, s)
	b.ReportMetric(float64(usedMemory(b, probe)-before)/storetest.MarkerCount, "bytes/marker")
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
