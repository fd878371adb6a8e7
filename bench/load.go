package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// batchSize is how many consecutive payloads share a taskUUID, like the
// images of one Runware request with numberResults 4.
const batchSize = 4

// payloads makes Runware-like imageInference results, about 300 bytes each.
// Payload id n has its own imageUUID; ids n/batchSize share a taskUUID. The
// run prefix keeps ids of different runs apart.
type payloads struct {
	run  uint32
	next atomic.Uint64
}

func uuid(run uint32, kind uint16, n uint64) string {
	return fmt.Sprintf("%08x-%04x-4000-8000-%012x", run, kind, n&0xffffffffffff)
}

func (p *payloads) body(id uint64) []byte {
	task := uuid(p.run, 0x7a5c, id/batchSize)
	image := uuid(p.run, 0x1a6e, id)
	return fmt.Appendf(nil, `{"data":[{"taskType":"imageInference","taskUUID":"%s","imageUUID":"%s",`+
		`"imageURL":"https://im.runware.ai/image/ws/2/ii/%s.webp","seed":%d,"NSFWContent":false,"cost":0.0038}]}`,
		task, image, image, 1000000000+id*7919%1000000000)
}

// result is one timed run against one target.
type result struct {
	requests int             // completed inside the measured window
	total    int             // completed, warm-up included
	non200   int             // of those, answers other than 200
	errors   int             // transport errors (whole run)
	window   time.Duration   // measured window
	elapsed  time.Duration   // whole run, warm-up included
	lat      []time.Duration // latencies in the window, sorted
	acked    []uint64        // payload ids answered 200 (whole run, warm-up included)
}

func (r result) rps() float64 { return float64(r.requests) / r.window.Seconds() }

// pct is the q-quantile (0..1) of the sorted latencies.
func (r result) pct(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(q*float64(len(r.lat))))]
}

// runLoad drives POSTs at url from conns keep-alive connections, each in a
// closed loop (next request when the previous answer is in). Requests
// during warmup are sent but not measured; the run stops after
// warmup+window, or when ctx is done.
func runLoad(ctx context.Context, url string, conns int, warmup, window time.Duration, gen *payloads) result {
	tr := &http.Transport{
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	start := time.Now()
	from := start.Add(warmup)
	end := from.Add(window)
	var (
		mu  sync.Mutex
		res = result{window: window}
		wg  sync.WaitGroup
	)
	for range conns {
		wg.Go(func() {
			var lat []time.Duration
			var acked []uint64
			var non200, errs, total int
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				id := gen.next.Add(1)
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(gen.body(id)))
				if err != nil {
					panic(err)
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("User-Agent", "webhook-relay-bench")
				resp, err := client.Do(req)
				if err != nil {
					errs++
					time.Sleep(10 * time.Millisecond) // no hot loop against a dead port
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				t1 := time.Now()
				total++
				if resp.StatusCode == http.StatusOK {
					acked = append(acked, id)
				}
				if t0.Before(from) || !t1.Before(end) {
					continue
				}
				lat = append(lat, t1.Sub(t0))
				if resp.StatusCode != http.StatusOK {
					non200++
				}
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			res.acked = append(res.acked, acked...)
			res.non200 += non200
			res.errors += errs
			res.total += total
			mu.Unlock()
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.requests = len(res.lat)
	slices.Sort(res.lat)
	return res
}
