package redis

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// BenchmarkRedisAdmitHistory measures an admit of a 300-byte Runware
// payload with history off and on in the same run: Redis's main-thread
// CPU per admit (off-redis-µs/op, on-redis-µs/op) and the wall time per
// admit (off-µs/op, on-µs/op), 16 admits at a time, the two alternating
// in blocks so that the drift of a shared machine hits both alike:
//
//	go test -run '^$' -bench RedisAdmitHistory -benchtime 20000x ./queue/redis/
func BenchmarkRedisAdmitHistory(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer raw.Close()
	var stores [2]*Store // history off, on
	for i := range stores {
		c := goredis.NewUniversalClient(&goredis.UniversalOptions{Addrs: []string{srv.Addr()}, MaxRetries: -1, PipelinePoolSize: -1})
		s, err := New(context.Background(), c, Config{Prefix: "benchhist" + strconv.Itoa(i), Consumer: "c"},
			queue.Options{Window: time.Hour, History: time.Duration(i) * 24 * time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		stores[i] = s
	}
	body := []byte(`{"data":[{"taskType":"imageInference","taskUUID":"a770f077-f413-47de-9dac-be0b26a35da6",` +
		`"imageUUID":"77da2d99-a6d3-44d9-b8c0-ae9fb06b6200","imageURL":"https://im.runware.ai/image/ws/0.5/ii/` +
		`77da2d99-a6d3-44d9-b8c0-ae9fb06b6200.jpg","seed":1234567890,"NSFWContent":false,"cost":0.0013}]}`)
	meta := queue.RequestMeta{ContentType: "application/json", UserAgent: "Runware", ForwardedFor: "192.0.2.1"}
	const workers, block = 16, 500
	var cpu, wall [2]time.Duration
	b.ResetTimer()
	for from := 0; from < b.N; from += block {
		n := min(block, b.N-from)
		for _, mode := range [2][2]int{{0, 1}, {1, 0}}[from/block%2] {
			cpu0, start := redisCPU(b, raw), time.Now()
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := from + w; i < from+n; i += workers {
						e := &queue.Entry{Key: "a770f077-f413-47de-9dac-be0b26a35da6:" + strconv.Itoa(i), Body: body,
							Request: meta, Destinations: []string{"app"}}
						if _, err := stores[mode].Admit(context.Background(), e); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			wall[mode] += time.Since(start)
			cpu[mode] += redisCPU(b, raw) - cpu0
		}
	}
	b.StopTimer()
	for mode, name := range []string{"off", "on"} {
		b.ReportMetric(float64(cpu[mode].Nanoseconds())/1e3/float64(b.N), name+"-redis-µs/op")
		b.ReportMetric(float64(wall[mode].Nanoseconds())/1e3/float64(b.N), name+"-µs/op")
	}
}
