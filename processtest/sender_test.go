package processtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The sender simulator behaves like Runware delivering task webhooks: it
// POSTs JSON results (single images, and batches whose images share a
// taskUUID and differ by imageUUID, each image its own webhook), retries
// every non-2xx answer and connection error after 250ms doubling up to 8s
// with up to 20% jitter, and stops at the first 2xx. For each payload it
// records whether and when it was acknowledged: a 200, accepted or
// duplicate. Every body carries a unique "simID", which ChaosUpstream reads
// to match deliveries to payloads.

// Sender retry schedule, Runware's.
const (
	simBackoffInitial = 250 * time.Millisecond
	simBackoffMax     = 8 * time.Second
	simJitter         = 0.2
)

// SimPayload is one webhook body.
type SimPayload struct {
	ID        string // simID: unique
	TaskUUID  string
	ImageUUID string
	Body      []byte
	Sum       [32]byte // SHA-256 of Body
}

// SimRecord is what happened to one payload at the sender.
type SimRecord struct {
	P        *SimPayload
	First    time.Time // first attempt
	Attempts int
	Acked    bool
	AckedAt  time.Time // first 200
	Status   string    // body of the first 200: accepted or duplicate
	Non2xx   int
	ConnErrs int
}

// SimConfig sets up a Sim.
type SimConfig struct {
	Seed uint64
	// Senders is how many independent senders generate payloads.
	Senders int
	// Gap is the mean pause between two tasks of one sender.
	Gap time.Duration
	// MaxOutstanding bounds the unacknowledged payloads per sender; a sender
	// generates no new task while it has that many.
	MaxOutstanding int
	// BatchMax is the largest batch (images of one task); 1 means single
	// results only.
	BatchMax int
	// Pad adds this many bytes of filler to each body.
	Pad int
	// Targets returns the URLs to post to; each attempt takes one at
	// random (a load balancer in front of several instances).
	Targets func() []string
}

// Sim runs the senders.
type Sim struct {
	t      testing.TB
	cfg    SimConfig
	client *http.Client

	retryCtx    context.Context // cancelled by Abort: outstanding payloads stop retrying
	abort       context.CancelFunc
	wg          sync.WaitGroup
	outstanding atomic.Int64

	mu       sync.Mutex
	recs     []*SimRecord
	statuses map[int]int // answers by status; 0 counts connection errors
	retryAft int         // 503s that carried Retry-After
}

// NewSim makes a simulator; nothing is sent before Run or Send.
func NewSim(t testing.TB, cfg SimConfig) *Sim {
	if cfg.Senders <= 0 {
		cfg.Senders = 1
	}
	if cfg.MaxOutstanding <= 0 {
		cfg.MaxOutstanding = 64
	}
	if cfg.BatchMax <= 0 {
		cfg.BatchMax = 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sim{
		t:   t,
		cfg: cfg,
		client: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
				MaxIdleConns:        256,
				MaxIdleConnsPerHost: 128,
				IdleConnTimeout:     30 * time.Second,
			},
		},
		retryCtx: ctx,
		abort:    cancel,
		statuses: make(map[int]int),
	}
	t.Cleanup(func() {
		s.Abort()
		s.wg.Wait()
		s.client.CloseIdleConnections()
	})
	return s
}

// simUUID makes a UUID-shaped string unique to (sender, n).
func simUUID(rng *rand.Rand, sender, n int) string {
	return fmt.Sprintf("%08x-%04x-4%03x-%04x-%04x%08x",
		rng.Uint32(), rng.IntN(1<<16), rng.IntN(1<<12), 0x8000|rng.IntN(1<<14), sender, n)
}

// NewPayload builds a Runware imageInference result. Half of them are
// wrapped in {"data":[...]} as Runware does, the others bare.
func (s *Sim) NewPayload(rng *rand.Rand, sender, n int, task string, pad int) *SimPayload {
	id := fmt.Sprintf("sim-%d-%06d", sender, n)
	img := simUUID(rng, sender, n)
	item := fmt.Sprintf(`{"taskType":"imageInference","taskUUID":%q,"imageUUID":%q,`+
		`"imageURL":"https://im.runware.ai/image/ws/2/ii/%s.jpg","seed":%d,"cost":0.0013,"simID":%q`,
		task, img, img, rng.Int64N(1<<40), id)
	if pad > 0 {
		item += fmt.Sprintf(`,"pad":%q`, strings.Repeat("x", pad))
	}
	item += "}"
	body := item
	if rng.IntN(2) == 0 {
		body = `{"data":[` + item + `]}`
	}
	return &SimPayload{ID: id, TaskUUID: task, ImageUUID: img, Body: []byte(body), Sum: sha256.Sum256([]byte(body))}
}

// Run starts the senders; they generate tasks until ctx is done. Payloads
// not yet acknowledged then keep retrying until they are, or until Abort.
func (s *Sim) Run(ctx context.Context) {
	for i := range s.cfg.Senders {
		s.wg.Go(func() { s.sender(ctx, i) })
	}
}

func (s *Sim) sender(ctx context.Context, id int) {
	rng := rand.New(rand.NewPCG(s.cfg.Seed, uint64(id)+1))
	var mine atomic.Int64
	n := 0
	for ctx.Err() == nil {
		if mine.Load() >= int64(s.cfg.MaxOutstanding) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		task := simUUID(rng, 1000+id, n)
		images := 1 + rng.IntN(s.cfg.BatchMax)
		for range images {
			p := s.NewPayload(rng, id, n, task, s.cfg.Pad)
			n++
			mine.Add(1)
			s.send(p, rng.Uint64(), func() { mine.Add(-1) })
		}
		gap := time.Duration(rng.Float64() * 2 * float64(s.cfg.Gap))
		select {
		case <-ctx.Done():
		case <-time.After(gap):
		}
	}
}

// Send sends fixed payloads, each retried until acknowledged or Abort.
func (s *Sim) Send(ps []*SimPayload) {
	for i, p := range ps {
		s.send(p, s.cfg.Seed+uint64(i), nil)
	}
}

// send registers p and delivers it in its own goroutine with the retry
// schedule.
func (s *Sim) send(p *SimPayload, seed uint64, done func()) {
	rec := &SimRecord{P: p}
	s.mu.Lock()
	s.recs = append(s.recs, rec)
	s.mu.Unlock()
	s.outstanding.Add(1)
	s.wg.Go(func() {
		defer s.outstanding.Add(-1)
		if done != nil {
			defer done()
		}
		rng := rand.New(rand.NewPCG(seed, 7))
		simRetry(s.retryCtx, rng, simBackoffMax, func() bool { return s.attempt(rec, rng) })
	})
}

// simRetry calls attempt until it reports an acknowledgement or ctx is
// done, waiting Runware's backoff in between: simBackoffInitial doubling
// up to backoffMax, with simJitter drawn from rng.
func simRetry(ctx context.Context, rng *rand.Rand, backoffMax time.Duration, attempt func() bool) {
	wait := simBackoffInitial
	for !attempt() {
		d := time.Duration(float64(wait) * (1 + simJitter*(2*rng.Float64()-1)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		wait = min(2*wait, backoffMax)
	}
}

// simRequest is one attempt of a Runware-like sender: body POSTed to url
// as JSON with the simulator's User-Agent. It is nil, and the test failed,
// when the request cannot be built.
func simRequest(t testing.TB, ctx context.Context, url string, body []byte) *http.Request {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Errorf("building request: %v", err)
		return nil
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Runware-Webhook-Sim/1.0")
	return req
}

// attempt posts rec's payload once and reports whether it was acknowledged.
func (s *Sim) attempt(rec *SimRecord, rng *rand.Rand) bool {
	targets := s.cfg.Targets()
	url := targets[rng.IntN(len(targets))]
	s.mu.Lock()
	if rec.Attempts == 0 {
		rec.First = time.Now()
	}
	rec.Attempts++
	s.mu.Unlock()

	req := simRequest(s.t, s.retryCtx, url, rec.P.Body)
	if req == nil {
		return false
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.mu.Lock()
		rec.ConnErrs++
		s.statuses[0]++
		s.mu.Unlock()
		return false
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statuses[resp.StatusCode]++
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" {
		s.retryAft++
	}
	if resp.StatusCode/100 != 2 || rerr != nil {
		rec.Non2xx++
		return false
	}
	rec.Acked, rec.AckedAt = true, now
	rec.Status = strings.TrimSpace(string(body))
	return true
}

// Outstanding is how many payloads are still being retried.
func (s *Sim) Outstanding() int { return int(s.outstanding.Load()) }

// Abort stops every retry; payloads not acknowledged stay so.
func (s *Sim) Abort() { s.abort() }

// Wait waits up to timeout for the senders and every retry to end; after
// the timeout it aborts the remaining retries and waits for them.
func (s *Sim) Wait(timeout time.Duration) (timedOut bool) {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return false
	case <-time.After(timeout):
		s.Abort()
		<-done
		return true
	}
}

// Records returns a snapshot of every payload's record.
func (s *Sim) Records() []SimRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SimRecord, len(s.recs))
	for i, r := range s.recs {
		out[i] = *r
	}
	return out
}

// AckedCount is how many payloads got a 200.
func (s *Sim) AckedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.recs {
		if r.Acked {
			n++
		}
	}
	return n
}

// Statuses counts the answers by status code (0: connection errors), and
// the 503s that carried Retry-After.
func (s *Sim) Statuses() (map[int]int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int]int, len(s.statuses))
	for k, v := range s.statuses {
		out[k] = v
	}
	return out, s.retryAft
}

// SimReport compares what the sender had acknowledged with what the
// upstream received.
type SimReport struct {
	Sent, Acked, Delivered, Duplicated, Lost int
	// DeliveredUnacked are payloads delivered though the sender never saw
	// their 200 (a crash between the commit and the answer): harmless,
	// its retry is answered duplicate or the payload stays un-acked.
	DeliveredUnacked int
	MaxDelay         time.Duration // first 200 -> first delivery
	LostIDs          []string
	BodyMismatch     []string
	AckedAsDuplicate int // first 200 said duplicate: an earlier attempt was stored but its answer lost
	// Slowest are the acknowledged payloads that waited longest for their
	// first delivery, slowest first (at most 5).
	Slowest []SimLate
}

// SimLate is one slow payload: when it was acknowledged and first delivered.
type SimLate struct {
	ID                 string
	AckedAt, Delivered time.Time
	Attempts           int // sender attempts
}

func (r SimReport) String() string {
	return fmt.Sprintf("sent %d, acknowledged %d, delivered %d, duplicated %d, lost %d, max delay %s (delivered without a 200 seen: %d, first 200 was \"duplicate\": %d)",
		r.Sent, r.Acked, r.Delivered, r.Duplicated, r.Lost, r.MaxDelay.Round(time.Millisecond), r.DeliveredUnacked, r.AckedAsDuplicate)
}

// Compare matches the sender's records against the upstream's deliveries.
func (s *Sim) Compare(up *ChaosUpstream) SimReport {
	recs := s.Records()
	dels := up.Deliveries()
	var r SimReport
	r.Sent = len(recs)
	for _, rec := range recs {
		d, delivered := dels[rec.P.ID]
		if delivered {
			r.Delivered++
			if d.count > 1 {
				r.Duplicated++
			}
			if d.sum != rec.P.Sum {
				r.BodyMismatch = append(r.BodyMismatch, rec.P.ID)
			}
		}
		if !rec.Acked {
			if delivered {
				r.DeliveredUnacked++
			}
			continue
		}
		r.Acked++
		if strings.Contains(rec.Status, "duplicate") {
			r.AckedAsDuplicate++
		}
		if !delivered {
			r.Lost++
			r.LostIDs = append(r.LostIDs, rec.P.ID)
			continue
		}
		r.MaxDelay = max(r.MaxDelay, d.first.Sub(rec.AckedAt))
		r.Slowest = append(r.Slowest, SimLate{ID: rec.P.ID, AckedAt: rec.AckedAt, Delivered: d.first, Attempts: rec.Attempts})
	}
	sort.Slice(r.Slowest, func(i, j int) bool {
		return r.Slowest[i].Delivered.Sub(r.Slowest[i].AckedAt) > r.Slowest[j].Delivered.Sub(r.Slowest[j].AckedAt)
	})
	r.Slowest = r.Slowest[:min(5, len(r.Slowest))]
	return r
}

// Undelivered is how many acknowledged payloads the upstream has not
// received yet.
func (s *Sim) Undelivered(up *ChaosUpstream) int {
	dels := up.Deliveries()
	n := 0
	for _, rec := range s.Records() {
		if _, ok := dels[rec.P.ID]; rec.Acked && !ok {
			n++
		}
	}
	return n
}
