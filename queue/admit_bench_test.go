package queue_test

import (
	"context"
	"fmt"
	"math/bits"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

// BenchmarkAdmit compares the stores (Redis with appendfsync always, like
// bolt's fsync per commit) side by side at 1, 16 and 64
// concurrent admits and reports the admit (ack) latency p99 with the
// throughput. RunParallel starts parallelism×GOMAXPROCS goroutines: run
// with -cpu 1 for exactly that many, e.g.
//
//	go test -run '^$' -bench BenchmarkAdmit -cpu 1 ./queue/
func BenchmarkAdmit(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) queue.Store
	}{
		{"memory", func(b *testing.B) queue.Store {
			s := queue.NewMemory(queue.Options{Window: 24 * time.Hour})
			b.Cleanup(func() { _ = s.Close() })
			return s
		}},
		{"bolt", func(b *testing.B) queue.Store {
			return openBolt(b, filepath.Join(b.TempDir(), "relay.db"), queue.Options{Window: 24 * time.Hour})
		}},
		{"redis", func(b *testing.B) queue.Store {
			srv := redistest.Start(b, redistest.Options{AOF: true})
			return openRedis(b, srv, uniquePrefix(), "c1", 0, queue.Options{Window: 24 * time.Hour})
		}},
	}
	for _, st := range stores {
		for _, conc := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/concurrency=%d", st.name, conc), func(b *testing.B) {
				b.SetParallelism(conc)
				var h latencies
				storetest.Bench(b, func(b *testing.B) queue.Store {
					return timedStore{Store: st.open(b), h: &h}
				})
				b.ReportMetric(float64(h.quantile(0.99).Microseconds()), "p99-µs")
			})
		}
	}
}

// timedStore records how long each Admit takes.
type timedStore struct {
	queue.Store
	h *latencies
}

func (s timedStore) Admit(ctx context.Context, e *queue.Entry) (queue.Admission, error) {
	start := time.Now()
	a, err := s.Store.Admit(ctx, e)
	s.h.add(time.Since(start))
	return a, err
}

// latencies is a lock-free histogram with four buckets per power of two
// (about 19% resolution), cheap enough not to disturb what it measures.
type latencies struct{ n [64 * 4]atomic.Int64 }

func (h *latencies) add(d time.Duration) {
	h.n[bucketOf(uint64(max(d, 1)))].Add(1)
}

func bucketOf(ns uint64) int {
	exp := bits.Len64(ns) - 1
	if exp < 2 {
		return int(ns)
	}
	return exp*4 + int(ns>>(exp-2)&3)
}

// quantile returns the upper bound of the bucket holding the q quantile.
func (h *latencies) quantile(q float64) time.Duration {
	var total int64
	for i := range h.n {
		total += h.n[i].Load()
	}
	want := int64(q * float64(total))
	var seen int64
	for i := range h.n {
		seen += h.n[i].Load()
		if seen > want || (seen == total && total > 0) {
			exp, sub := i/4, i%4
			if exp < 2 {
				return time.Duration(i + 1)
			}
			return time.Duration((uint64(4+sub+1) << (exp - 2)))
		}
	}
	return 0
}

// TestBoltDamagedEntryDoesNotHaltClaims: a queued record that cannot be
// decoded comes back from Claim marked Damaged, the entries after it still
// come, and burying it keeps the reason and the body.
