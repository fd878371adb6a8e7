package redis

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
)

// BenchmarkRedisAdmitBody measures what an admit costs Redis (its main
// thread's CPU time per admit) with the body inside the admit script
// (inline-redis-µs/op) and staged under a key of its own first
// (staged-redis-µs/op), around inlineBodyMax, with the AOF docs/redis.md
// recommends and 16 admits at a time. The two alternate in blocks, so that
// the drift of a shared machine hits both alike:
//
//	go test -run '^$' -bench RedisAdmitBody -benchtime 8000x ./queue/redis/
func BenchmarkRedisAdmitBody(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{AOF: true})
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer raw.Close()
	if err := raw.ConfigSet(context.Background(), "appendfsync", "everysec").Err(); err != nil {
		b.Fatal(err)
	}
	seq := 0
	for _, size := range []int{300, 2 << 10, 4 << 10, 8 << 10, 16 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			var stores [2]*Store // inline, staged
			for i := range stores {
				seq++
				c := goredis.NewUniversalClient(&goredis.UniversalOptions{Addrs: []string{srv.Addr()}, MaxRetries: -1, PipelinePoolSize: -1})
				s, err := New(context.Background(), c, Config{Prefix: "bench" + strconv.Itoa(seq), Consumer: "c"}, queue.Options{Window: time.Hour})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				stores[i] = s
			}
			defer raw.FlushAll(context.Background())
			old := inlineBodyMax
			defer func() { inlineBodyMax = old }()
			body := []byte(strings.Repeat("a", size))
			const workers, block = 16, 200
			var cpu [2]time.Duration
			b.ResetTimer()
			for from := 0; from < b.N; from += block {
				n := min(block, b.N-from)
				for _, mode := range [2][2]int{{0, 1}, {1, 0}}[from/block%2] {
					inlineBodyMax = size - mode // staged: one byte too large
					cpu0 := redisCPU(b, raw)
					var wg sync.WaitGroup
					for w := range workers {
						wg.Go(func() {
							for i := from + w; i < from+n; i += workers {
								e := &queue.Entry{Key: "k" + strconv.Itoa(i), Body: body}
								if _, err := stores[mode].Admit(context.Background(), e); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
					wg.Wait()
					cpu[mode] += redisCPU(b, raw) - cpu0
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpu[0].Nanoseconds())/1e3/float64(b.N), "inline-redis-µs/op")
			b.ReportMetric(float64(cpu[1].Nanoseconds())/1e3/float64(b.N), "staged-redis-µs/op")
		})
	}
}

// redisCPU is the CPU time Redis's main thread has used so far.
func redisCPU(b *testing.B, c *goredis.Client) time.Duration {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for line := range strings.SplitSeq(info, "\n") {
		name, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if name == "used_cpu_sys_main_thread" || name == "used_cpu_user_main_thread" {
			f, _ := strconv.ParseFloat(v, 64)
			total += time.Duration(f * float64(time.Second))
		}
	}
	return total
}
