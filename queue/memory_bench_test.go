package queue_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

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
