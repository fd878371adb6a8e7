package queue_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

func newMemory(t testing.TB, opts queue.Options) queue.Store {
	s := queue.NewMemory(opts)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestMemory(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts queue.Options) queue.Store {
		return newMemory(t, opts)
	})
}

func BenchmarkMemoryAdmit(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) queue.Store {
		return newMemory(b, queue.Options{Window: 24 * time.Hour})
	})
}

// BenchmarkAdmit: the memory store's admit latency at 1, 16 and 64
// concurrent admits, beside the durable stores' benchmarks of the same name.
func BenchmarkAdmit(b *testing.B) {
	storetest.BenchConcurrency(b, func(b *testing.B) queue.Store {
		return newMemory(b, queue.Options{Window: 24 * time.Hour})
	})
}

// BenchmarkMarkerBytes reports what one dedupe marker of a Runware key costs
// the memory store (bytes/marker, heap growth), for sizing window against a
// rate. It measures once whatever b.N is: the time per op is not the point.
func BenchmarkMarkerBytes(b *testing.B) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := queue.NewMemory(queue.Options{Window: 24 * time.Hour})
	storetest.FillMarkers(b, s)
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/storetest.MarkerCount, "bytes/marker")
	runtime.KeepAlive(s)
}
