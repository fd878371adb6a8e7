package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
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
//
// With an image (setSize, the -body-size flag) each body also carries
// "imageBase64Data", as Runware sends results with outputType base64Data:
// the same random base64 string in every body, spliced in as the request
// is sent, so that the load generator copies nothing. The key (taskUUID
// and imageUUID) is the small body's.
type payloads struct {
	run  uint32
	next atomic.Uint64

	image []byte // base64 characters; nil: small bodies
}

// setSize makes every body about size bytes (at least the small body's).
func (p *payloads) setSize(size int) {
	n := size - len(p.body(0)) - len(imageField) - len(`"`)
	n -= n % 4 // whole base64 quanta
	if n <= 0 {
		return
	}
	raw := make([]byte, n/4*3)
	for i := 0; i < len(raw); i += 8 {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], rand.Uint64())
		copy(raw[i:], b[:])
	}
	p.image = make([]byte, n)
	base64.StdEncoding.Encode(p.image, raw)
}

const imageField = `,"imageBase64Data":"`

// bodyLen is the length of payload id's body as sent.
func (p *payloads) bodyLen(id uint64) int {
	n := len(p.body(id))
	if p.image != nil {
		n += len(imageField) + len(p.image) + len(`"`)
	}
	return n
}

// open returns a reader of payload id's body as sent and its length: the
// small body, or with an image the small body with the image field
// inserted before its closing "}]}".
func (p *payloads) open(id uint64) (func() io.Reader, int64) {
	small := p.body(id)
	if p.image == nil {
		return func() io.Reader { return bytes.NewReader(small) }, int64(len(small))
	}
	head, tail := small[:len(small)-len("}]}")], `"}]}`
	n := len(head) + len(imageField) + len(p.image) + len(tail)
	return func() io.Reader {
		return io.MultiReader(bytes.NewReader(head), strings.NewReader(imageField), bytes.NewReader(p.image), strings.NewReader(tail))
	}, int64(n)
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
	ok       int             // answers 200 inside the measured window
	codes    map[int]int     // large bodies: answers other than 200 by status, whole run
	budget   bool            // the run stopped early: maxAcked payloads were answered 200
}

func (r result) rps() float64 { return float64(r.requests) / r.window.Seconds() }

// okps is the rate of 200 answers in the measured window.
func (r result) okps() float64 { return float64(r.ok) / r.window.Seconds() }

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
// warmup+window, or when ctx is done, or (maxAcked > 0) once maxAcked
// requests were answered 200: then the measured window ends there.
func runLoad(ctx context.Context, url string, conns int, warmup, window time.Duration, gen *payloads, maxAcked int64) result {
	tr := &http.Transport{
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	large := gen.image != nil
	if large {
		client.Timeout = 2 * time.Minute // 64 bodies of megabytes at once take a while
	}

	start := time.Now()
	from := start.Add(warmup)
	end := from.Add(window)
	var (
		mu     sync.Mutex
		res    = result{window: window}
		wg     sync.WaitGroup
		nAcked atomic.Int64
		halted atomic.Int64 // when the budget was reached, UnixNano
	)
	for range conns {
		wg.Go(func() {
			var lat []time.Duration
			var acked []uint64
			var non200, errs, total, ok int
			codes := map[int]int{}
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) || halted.Load() != 0 {
					break
				}
				id := gen.next.Add(1)
				open, n := gen.open(id)
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, open())
				if err != nil {
					panic(err)
				}
				if large { // a MultiReader: NewRequest cannot tell its length
					req.ContentLength = n
					req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(open()), nil }
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
				if large && resp.StatusCode != http.StatusOK {
					codes[resp.StatusCode]++
				}
				if resp.StatusCode == http.StatusOK {
					acked = append(acked, id)
					if maxAcked > 0 && nAcked.Add(1) == maxAcked {
						halted.Store(t1.UnixNano())
					}
				}
				// Small bodies: requests sent inside the window. Large ones
				// can take longer than a warm-up: every answer that
				// arrives inside the window counts.
				if (t0.Before(from) && !large) || t1.Before(from) || !t1.Before(end) {
					continue
				}
				if h := halted.Load(); h != 0 && t1.UnixNano() > h {
					continue // after the budget was reached: outside the window
				}
				lat = append(lat, t1.Sub(t0))
				if resp.StatusCode != http.StatusOK {
					non200++
				} else {
					ok++
				}
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			res.acked = append(res.acked, acked...)
			res.non200 += non200
			res.errors += errs
			res.total += total
			res.ok += ok
			if large {
				if res.codes == nil {
					res.codes = map[int]int{}
				}
				for c, n := range codes {
					res.codes[c] += n
				}
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	if h := halted.Load(); h != 0 {
		res.budget = true
		// the window ends when the budget was reached (it may not have begun)
		res.window = max(time.Millisecond, time.Unix(0, h).Sub(from))
	}
	res.requests = len(res.lat)
	slices.Sort(res.lat)
	return res
}
