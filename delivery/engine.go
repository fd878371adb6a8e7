// Package delivery forwards stored webhook payloads to the upstream in the
// background, retrying with backoff until the upstream answers 2xx, and
// moving what never gets through to the dead letters.
package delivery

import (
	"container/heap"
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/internal/faultlog"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// Settings are the delivery settings of one relay. A config reload may
// replace them while the engine runs; the queue stays.
type Settings struct {
	// Upstream is where payloads go; its own query is kept and the
	// payload's query is appended.
	Upstream *url.URL
	// Timeout bounds one attempt.
	Timeout time.Duration
	// Concurrency bounds attempts running at once.
	Concurrency int
	// Backoff is the retry schedule.
	Backoff Backoff
	// GiveUpAfter is how long after it was queued a payload that still
	// fails is moved to the dead letters.
	GiveUpAfter time.Duration
	// HeaderUp are extra headers on every forwarded request.
	HeaderUp http.Header
	// SignKey, if set, signs every attempt per Standard Webhooks.
	SignKey []byte
	// MaxDead bounds the dead letters kept (0: no bound); past it the
	// oldest are removed.
	MaxDead int
	// DeadRetention is how long a dead letter is kept (0: for ever).
	DeadRetention time.Duration
	// Logger, if set, replaces Config.Logger: each config has its own log
	// outputs, and the engine follows the newest.
	Logger *zap.Logger
}

// Result names used for observers and metrics.
const (
	ResultSuccess = "success"
	ResultRetry   = "retry"
	ResultDead    = "dead"
)

// Config sets up an Engine.
type Config struct {
	// Store is the queue the engine delivers from.
	Store    queue.Claimer
	Settings *Settings
	Logger   *zap.Logger
	// Budget bounds the bodies held in memory, shared with the ack path:
	// a body is loaded from the store only for an attempt, once its bytes
	// fit. Nil: no bound.
	Budget *budget.Budget
	// Observe, if set, is called after every attempt with its result and
	// how long the upstream took.
	Observe func(result string, took time.Duration)
	// DeadDropped, if set, is called for every dead letter removed by
	// MaxDead or DeadRetention.
	DeadDropped func(e *queue.Entry)
	// TrimInterval is how often dead letters are checked against
	// DeadRetention. Default 1m.
	TrimInterval time.Duration
	// PollInterval is how often the engine looks for payloads it was not
	// woken for (queued by another process, or released). Default 1s.
	PollInterval time.Duration
	// LeaseRefresh is how often held claims are extended. Default 10s.
	LeaseRefresh time.Duration
	// Transport overrides the HTTP transport (tests).
	Transport http.RoundTripper
	// Now and Jitter override the clock and the jitter source (tests).
	Now    func() time.Time
	Jitter func() float64
}

// Engine delivers the queue of one store. It claims a bounded number of
// entries, attempts each when it is due with at most Concurrency attempts at
// once, and reschedules failures with backoff, so one failing payload holds
// one place and never blocks the others.
type Engine struct {
	cfg      Config
	settings atomic.Pointer[Settings]
	client   *http.Client
	wake     chan struct{}
	freed    chan struct{} // an attempt is over: its concurrency place is free
	results  chan result   // an entry's bookkeeping is over
	inFlight atomic.Int64
	full     atomic.Bool // holding as many entries as it may
	claimErr faultlog.Tracker
	bodyErr  faultlog.Tracker
	trimErr  faultlog.Tracker
	trimming atomic.Bool    // a trim of the dead letters is running
	trimMore atomic.Bool    // asked for while one was running: run again
	trims    sync.WaitGroup // running trims, waited for by Stop

	ctx       context.Context // ends the claim loop
	stop      context.CancelFunc
	attemptCx context.Context // ends running attempts, after the grace
	abort     context.CancelFunc
	done      chan struct{}
}

// trimBatch bounds the dead letters one TrimDead call removes.
const trimBatch = 256

// storeTimeout bounds one bookkeeping call to the store.
const storeTimeout = 10 * time.Second

// Start starts delivering.
func Start(cfg Config) *Engine {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.LeaseRefresh <= 0 {
		cfg.LeaseRefresh = 10 * time.Second
	}
	if cfg.TrimInterval <= 0 {
		cfg.TrimInterval = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Jitter == nil {
		cfg.Jitter = randomJitter
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	transport := cfg.Transport
	if transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 256
		transport = t
	}
	e := &Engine{
		cfg: cfg,
		client: &http.Client{
			Transport: transport,
			// A redirect is reported as what it is, not followed: the
			// upstream URL is the operator's to fix.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		wake:    make(chan struct{}, 1),
		freed:   make(chan struct{}),
		results: make(chan result),
		done:    make(chan struct{}),
	}
	e.settings.Store(cfg.Settings)
	e.ctx, e.stop = context.WithCancel(context.Background())
	e.attemptCx, e.abort = context.WithCancel(context.Background())
	go e.run()
	return e
}

// SetSettings replaces the delivery settings; entries already queued go to
// the new upstream.
func (e *Engine) SetSettings(s *Settings) { e.settings.Store(s) }

// Wake tells the engine that something was queued. It never blocks, and
// costs nothing while the engine holds all it may: it looks for more as
// soon as a place frees up anyway.
func (e *Engine) Wake() {
	if e.full.Load() {
		return
	}
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// InFlight reports how many attempts are running now.
func (e *Engine) InFlight() int { return int(e.inFlight.Load()) }

// Stop stops claiming, lets running attempts finish for up to grace, then
// cancels them, and gives every entry it still holds back to the store.
// Nothing is lost: what was not delivered stays queued.
func (e *Engine) Stop(grace time.Duration) {
	e.stop()
	t := time.AfterFunc(grace, e.abort)
	<-e.done
	t.Stop()
	e.abort()
	e.trims.Wait()
}

// held is an entry the engine has claimed.
type held struct {
	entry *queue.Entry
	due   time.Time
	// acked means the upstream took it and only the store's Ack is left.
	acked bool
	// leaving is set while the entry's Ack or Bury runs: its claim must not
	// be extended any more.
	leaving atomic.Bool
	// backingOff marks an entry waiting out its backoff after a failure.
	backingOff bool
}

// result is what a finished attempt reports to the loop.
type result struct {
	h    *held
	done bool      // the entry left the queue (delivered or buried)
	next time.Time // when to try again, unless done
}

func (e *Engine) run() {
	defer close(e.done)
	holding := make(map[string]*held)
	var due dueQueue
	running := 0 // attempts talking to the upstream, bounded by Concurrency
	busy := 0    // deliver goroutines that have not reported their result
	backingOff := 0
	lookForMore := true

	timer := time.NewTimer(time.Hour)
	poll := time.NewTicker(e.cfg.PollInterval)
	lease := time.NewTicker(e.cfg.LeaseRefresh)
	trim := time.NewTicker(e.cfg.TrimInterval)
	defer timer.Stop()
	defer poll.Stop()
	defer lease.Stop()
	defer trim.Stop()
	e.trimDead()

	free := func() { running-- }
	finish := func(r result) {
		busy--
		if r.done {
			delete(holding, r.h.entry.ID)
			lookForMore = true
			return
		}
		r.h.due = r.next
		r.h.backingOff = true
		backingOff++
		heap.Push(&due, r.h)
	}

	for {
		s := e.settings.Load()
		log := e.logger(s)
		// Keep up to four times the concurrency ready to go, and claim in
		// batches of a quarter of that rather than one entry per finished
		// delivery. Entries waiting out a backoff do not count, so failing
		// payloads never keep the others from being claimed; maxHeld bounds
		// how many are held in all. Held entries carry no body: it is
		// loaded for an attempt only, within the memory budget.
		limit := 4 * s.Concurrency
		batch := max(limit/4, 1)
		maxHeld := 16 * limit
		active := len(holding) - backingOff
		roomToHold := len(holding) < maxHeld
		if lookForMore && active <= limit-batch && roomToHold {
			want := min(limit-active, maxHeld-len(holding))
			ctx, cancel := context.WithTimeout(e.ctx, storeTimeout)
			entries, err := e.cfg.Store.Claim(ctx, want)
			cancel()
			lookForMore = false
			if err != nil {
				if e.ctx.Err() == nil {
					e.claimErr.Fail(log, "cannot read the queue from the store; retrying", err)
				}
			} else {
				e.claimErr.Ok(log, "store reachable again; delivering")
				now := e.cfg.Now()
				for _, ent := range entries {
					if _, ok := holding[ent.ID]; ok {
						// A shared store hands an entry out again when its
						// claim lapsed (the store was unreachable longer than
						// the visibility timeout): it is still ours.
						continue
					}
					h := &held{entry: ent, due: now}
					holding[ent.ID] = h
					heap.Push(&due, h)
				}
				// A full batch suggests more is waiting.
				lookForMore = len(entries) == want
			}
		}

		roomToHold = len(holding) < maxHeld
		e.full.Store(len(holding)-backingOff > limit-batch || !roomToHold)

		now := e.cfg.Now()
		for running < s.Concurrency && due.Len() > 0 && !due[0].due.After(now) {
			h := heap.Pop(&due).(*held)
			if h.backingOff {
				h.backingOff = false
				backingOff--
			}
			running++
			busy++
			e.inFlight.Add(1)
			go e.deliver(s, h)
		}

		var fire <-chan time.Time
		if due.Len() > 0 && running < s.Concurrency {
			timer.Reset(due[0].due.Sub(now))
			fire = timer.C
		}
		select {
		case <-e.ctx.Done():
			e.drain(running, busy, holding, free, finish)
			return
		case <-e.wake:
			lookForMore = true
		case <-poll.C:
			lookForMore = true
		case <-lease.C:
			if len(holding) > 0 {
				ids := make([]string, 0, len(holding))
				for id, h := range holding {
					if !h.leaving.Load() {
						ids = append(ids, id)
					}
				}
				ctx, cancel := context.WithTimeout(e.ctx, storeTimeout)
				if err := e.cfg.Store.Extend(ctx, ids); err != nil && e.ctx.Err() == nil {
					// Not found: finished meanwhile, or (shared stores) taken
					// over by another process after a stall; the upstream may
					// then see it twice, with the same Idempotency-Key.
					level := zap.WarnLevel
					if errors.Is(err, queue.ErrNotFound) {
						level = zap.DebugLevel
					}
					log.Log(level, "cannot extend claims on queued payloads", zap.Int("count", len(ids)), zap.Error(err))
				}
				cancel()
			}
		case <-e.freed:
			free()
		case r := <-e.results:
			finish(r)
		case <-trim.C:
			e.trimDead()
		case <-fire:
		}
	}
}

// drain waits for running attempts (Stop's grace bounds them) and releases
// everything still held.
func (e *Engine) drain(running, busy int, holding map[string]*held, free func(), finish func(result)) {
	for running > 0 || busy > 0 {
		select {
		case <-e.freed:
			free()
			running--
		case r := <-e.results:
			finish(r)
			busy--
		}
	}
	if len(holding) == 0 {
		return
	}
	ids := make([]string, 0, len(holding))
	for id := range holding {
		ids = append(ids, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := e.cfg.Store.Release(ctx, ids); err != nil {
		e.logger(e.settings.Load()).Warn("cannot release queued payloads at shutdown; they are delivered after their claims expire",
			zap.Int("count", len(ids)), zap.Error(err))
	}
}

// deliver makes one attempt for h and does the store's bookkeeping, then
// reports to the loop.
func (e *Engine) deliver(s *Settings, h *held) {
	ent := h.entry
	log := e.logger(s)
	retryIn := func() time.Time {
		return e.cfg.Now().Add(s.Backoff.Delay(max(ent.Attempts, 1), e.cfg.Jitter()))
	}

	if h.acked {
		e.freePlace()
		h.leaving.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		defer cancel()
		if err := e.cfg.Store.Ack(ctx, ent.ID); err != nil {
			h.leaving.Store(false)
			e.results <- result{h: h, next: retryIn()}
			return
		}
		e.results <- result{h: h, done: true}
		return
	}

	if ent.Damaged != "" {
		e.freePlace()
		e.buryDamaged(log, h, retryIn)
		return
	}

	taken, err := e.loadBody(ent)
	if err != nil {
		e.freePlace()
		switch {
		case errors.Is(err, queue.ErrNotFound):
			e.results <- result{h: h, done: true} // gone from the queue, see Bury
		case e.ctx.Err() != nil:
			e.results <- result{h: h, next: e.cfg.Now()} // stopping: released in drain
		default:
			e.bodyErr.Fail(log, "cannot read queued payloads from the store; retrying", err)
			e.results <- result{h: h, next: retryIn()}
		}
		return
	}
	e.bodyErr.Ok(log, "store readable again; delivering")

	ent.Attempts++
	start := e.cfg.Now()
	o := attempt(e.attemptCx, e.client, s, ent, ent.Attempts, start)
	took := e.cfg.Now().Sub(start)
	// The upstream is done with it: the body goes back to the budget, and
	// the bookkeeping below (a disk commit, a Redis round trip) must not
	// hold a concurrency place.
	ent.Body = nil
	if e.cfg.Budget != nil {
		e.cfg.Budget.GiveFromDelivery(taken)
	}
	e.freePlace()
	ent.LastStatus, ent.LastError = o.status, o.reason
	// the bookkeeping's own time starts now, not before a slow upstream
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()

	if o.verdict == retry && e.cfg.Now().Sub(ent.Queued) >= s.GiveUpAfter {
		o.verdict = dead
		ent.LastError = "gave up after " + s.GiveUpAfter.String() + "; last attempt: " + o.reason
	}

	if o.verdict != retry {
		h.leaving.Store(true)
	}
	switch o.verdict {
	case delivered:
		e.observe(ResultSuccess, took)
		if err := e.cfg.Store.Ack(ctx, ent.ID); err != nil {
			log.Error("payload delivered but the store could not remove it; it may be delivered again",
				zap.String("id", ent.ID), zap.Error(err))
			h.acked = true
			h.leaving.Store(false)
			e.results <- result{h: h, next: retryIn()}
			return
		}
		e.results <- result{h: h, done: true}

	case dead:
		err := e.cfg.Store.Bury(ctx, ent)
		if errors.Is(err, queue.ErrNotFound) {
			// Gone from the queue: another process delivered or buried it
			// after taking it over.
			e.results <- result{h: h, done: true}
			return
		}
		if err != nil {
			e.observe(ResultRetry, took)
			log.Error("cannot move payload to the dead letters; it stays queued", zap.String("id", ent.ID), zap.Error(err))
			h.leaving.Store(false)
			e.results <- result{h: h, next: retryIn()}
			return
		}
		e.observe(ResultDead, took)
		log.Warn("payload moved to the dead letters",
			zap.String("id", ent.ID), zap.Int("attempts", ent.Attempts),
			zap.Int("status", ent.LastStatus), zap.String("reason", ent.LastError))
		e.results <- result{h: h, done: true}
		e.trimDead()

	default:
		e.observe(ResultRetry, took)
		next := retryIn()
		if wait := start.Add(o.retryAfter); wait.After(next) {
			next = wait
		}
		// Not past give_up_after, whatever Retry-After asks: the last
		// attempt happens then, and a failure makes it a dead letter.
		if giveUp := ent.Queued.Add(s.GiveUpAfter); next.After(giveUp) {
			next = giveUp
		}
		if err := e.cfg.Store.Attempted(ctx, ent); errors.Is(err, queue.ErrNotFound) {
			e.results <- result{h: h, done: true} // gone from the queue, see Bury
			return
		} else if err != nil {
			log.Warn("cannot record a failed attempt", zap.String("id", ent.ID), zap.Error(err))
		}
		log.Debug("delivery failed; will retry",
			zap.String("id", ent.ID), zap.Int("attempt", ent.Attempts),
			zap.String("reason", o.reason), zap.Time("next", next))
		e.results <- result{h: h, next: next}
	}
}

// loadBody waits until ent's body fits in the memory budget, then reads it
// from the store into ent.Body. It returns the bytes taken from the budget,
// given back when the attempt is over.
func (e *Engine) loadBody(ent *queue.Entry) (int64, error) {
	taken := int64(ent.BodySize)
	if b := e.cfg.Budget; b != nil {
		// e.ctx, not the attempts' context: once stopping, no new attempt
		// starts, so nothing waits here through the grace
		if err := b.TakeForDelivery(e.ctx, taken); err != nil {
			return 0, err
		}
	}
	ctx, cancel := context.WithTimeout(e.ctx, storeTimeout)
	defer cancel()
	body, err := e.cfg.Store.Body(ctx, ent.ID)
	if err == nil && int64(len(body)) > taken && e.cfg.Budget != nil {
		// the claim understated it (a record from an older version):
		// account for what is really held
		if err = e.cfg.Budget.TakeForDelivery(e.ctx, int64(len(body))-taken); err == nil {
			taken = int64(len(body))
		}
	}
	if err != nil {
		if e.cfg.Budget != nil {
			e.cfg.Budget.GiveFromDelivery(taken)
		}
		return 0, err
	}
	ent.Body = body
	return taken, nil
}

// buryDamaged moves an entry whose stored record cannot be read to the
// dead letters at once, so it never holds up the queue. If even that
// fails it is logged, and skipped until it can be buried.
func (e *Engine) buryDamaged(log *zap.Logger, h *held, retryIn func() time.Time) {
	ent := h.entry
	ent.LastError = ent.Damaged
	h.leaving.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	err := e.cfg.Store.Bury(ctx, ent)
	switch {
	case err == nil:
		e.observe(ResultDead, 0)
		log.Error("queued payload cannot be read from the store; moved to the dead letters",
			zap.String("id", ent.ID), zap.String("reason", ent.Damaged))
		e.results <- result{h: h, done: true}
		e.trimDead()
	case errors.Is(err, queue.ErrNotFound):
		e.results <- result{h: h, done: true}
	default:
		h.leaving.Store(false)
		if ent.Attempts == 0 {
			log.Error("queued payload cannot be read from the store, nor moved to the dead letters; skipping it",
				zap.String("id", ent.ID), zap.String("reason", ent.Damaged), zap.Error(err))
		}
		ent.Attempts++
		e.results <- result{h: h, next: retryIn()}
	}
}

// trimDead removes the dead letters past MaxDead or DeadRetention, in the
// background, logging and reporting each one. A call while a trim runs
// makes that trim go round once more.
func (e *Engine) trimDead() {
	s := e.settings.Load()
	if s.MaxDead <= 0 && s.DeadRetention <= 0 {
		return
	}
	e.trimMore.Store(true)
	if !e.trimming.CompareAndSwap(false, true) {
		return
	}
	e.trims.Add(1)
	go func() {
		defer e.trims.Done()
		for e.trimMore.Swap(false) && e.ctx.Err() == nil {
			e.trimOnce(e.settings.Load())
		}
		e.trimming.Store(false)
		if e.trimMore.Load() {
			e.trimDead() // asked for between the loop's end and now
		}
	}()
}

func (e *Engine) trimOnce(s *Settings) {
	log := e.logger(s)
	var cutoff time.Time
	if s.DeadRetention > 0 {
		cutoff = e.cfg.Now().Add(-s.DeadRetention)
	}
	for e.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(e.ctx, storeTimeout)
		gone, err := e.cfg.Store.TrimDead(ctx, s.MaxDead, cutoff, trimBatch)
		cancel()
		if err != nil {
			if e.ctx.Err() == nil {
				e.trimErr.Fail(log, "cannot remove old dead letters; trying again later", err)
			}
			return
		}
		e.trimErr.Ok(log, "old dead letters removed again")
		for _, d := range gone {
			why := "more than max_dead (" + strconv.Itoa(s.MaxDead) + ") dead letters"
			if !cutoff.IsZero() && d.Died.Before(cutoff) {
				why = "dead for longer than dead_retention (" + s.DeadRetention.String() + ")"
			}
			log.Warn("dead letter removed: "+why,
				zap.String("id", d.ID), zap.String("key", d.Key), zap.Time("died", d.Died))
			if e.cfg.DeadDropped != nil {
				e.cfg.DeadDropped(d)
			}
		}
		if len(gone) < trimBatch {
			return
		}
	}
}

// freePlace gives the attempt's concurrency place back. InFlight drops
// here, before the entry's bookkeeping, so no one sees an empty backlog with
// an attempt still counted in flight.
func (e *Engine) freePlace() {
	e.inFlight.Add(-1)
	e.freed <- struct{}{}
}

// logger is the newest config's logger.
func (e *Engine) logger(s *Settings) *zap.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return e.cfg.Logger
}

func (e *Engine) observe(result string, took time.Duration) {
	if e.cfg.Observe != nil {
		e.cfg.Observe(result, took)
	}
}

// dueQueue orders held entries by when they are due.
type dueQueue []*held

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q dueQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *dueQueue) Push(x any)        { *q = append(*q, x.(*held)) }
func (q *dueQueue) Pop() any {
	old := *q
	h := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return h
}
