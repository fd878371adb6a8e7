package queue_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/bolt"
	"github.com/hookrelay/caddy-webhook-relay/queue/redis"
)

// The benchmarks in this package compare the stores side by side; these
// open the durable ones, closed when tb ends.

func openBolt(tb testing.TB, path string, opts queue.Options) *bolt.Store {
	tb.Helper()
	s, err := bolt.Open(path, opts)
	if err != nil {
		tb.Fatalf("bolt.Open: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

var prefixSeq atomic.Int64

func uniquePrefix() string {
	return "webhook_relay:t" + strconv.FormatInt(prefixSeq.Add(1), 10)
}

func openRedis(tb testing.TB, srv *redistest.Server, prefix, consumer string, visibility time.Duration, opts queue.Options) *redis.Store {
	tb.Helper()
	client := goredis.NewUniversalClient(&goredis.UniversalOptions{
		Addrs:            []string{srv.Addr()},
		MaxRetries:       -1, // as the module sets them
		PipelinePoolSize: -1,
	})
	s, err := redis.New(context.Background(), client, redis.Config{
		Prefix:            prefix,
		Consumer:          consumer,
		VisibilityTimeout: visibility,
	}, opts)
	if err != nil {
		tb.Fatalf("redis.New: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}
