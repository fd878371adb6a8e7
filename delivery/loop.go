package delivery

import (
	"container/heap"
	"context"
	"errors"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// held is an entry the engine has claimed: one it is attempting, or about
// to attempt once a concurrency place is free. A failed attempt gives its
// entry back to the store (Store.Retry), which keeps it until it is due
// again; only an entry the store could not take back (it was unreachable)
// stays held, waiting out the backoff here.
type held struct {
	entry *queue.Entry
	due   time.Time
	// acked means the upstream took it and only the store's Ack is left.
	acked bool
	// leaving is set while the entry's Ack or Bury runs: its claim must not
	// be extended any more.
	leaving atomic.Bool
	// attempting is set while the entry's turn runs, from its start to its
	// report: held, but not in the due queue. Like due and again it is the
	// loop's own field.
	attempting bool
	// again is the entry as a claim handed it out again while its turn
	// ran: the turn gave it back to the store (Retry) and it fell due before
	// the turn's report came, or (a shared store) the claim lapsed. The
	// loop holds it once the turn has reported.
	again *queue.Entry
}

// result is what a finished attempt reports to the loop.
type result struct {
	h    *held
	done bool      // the entry left the engine (delivered, buried, or given back)
	next time.Time // when to try again, unless done
	// retried is when the entry given back to the store (done) is due
	// again; zero for one that left the queue.
	retried time.Time
}

// freedPlace is what a turn hands back with its concurrency place, before
// its bookkeeping: what it learnt of the upstream comes with the place, so
// that no place freed by an unanswered attempt goes to another one
// unknowingly.
type freedPlace struct {
	h     *held
	s     *Settings // the settings the turn ran with
	reach reach
	// status and reason are the attempt's answer and, when it failed, why
	// (for the outage's events).
	status int
	reason string
}

// loop is the engine's claim loop. One goroutine (Engine.run) owns it: the
// entries it holds and the counts below are touched by no one else.
// Attempts run in goroutines of their own and report back through
// Engine.freed and Engine.results.
type loop struct {
	e       *Engine
	holding map[string]*held // claimed and not yet finished
	due     dueQueue         // held entries waiting for their attempt
	running int              // attempts talking to the upstream, bounded by Concurrency
	busy    int              // attempt goroutines that have not reported their result
	// lookForMore asks the next round to claim: woken, polled, an entry
	// left, a retry fell due, or the last claim came back full.
	lookForMore bool
	// nextDue is when the earliest retry waiting in the store is due, as
	// far as the loop knows (zero: none), if dueKnown. The store tells it
	// after a claim that came back short; retries this engine gives back
	// lower it; the poll forgets it, since other processes of a shared
	// store give back retries too.
	nextDue  time.Time
	dueKnown bool

	// outage tells whether the upstream is taken for down, and paces
	// the probes while it is.
	outage outage
	// pauses is when the destination's pause was last read (pause.go).
	pauses pauseReads

	// emitted is closed once the last outage event was handled
	// (events.go); nil: none yet.
	emitted chan struct{}

	// rateAt is when the destination's limiter may be asked again for a
	// start (rate.go); zero: now.
	rateAt time.Time

	timer *time.Timer // fires when the first due entry is due
	poll  *time.Ticker
	lease *time.Ticker
	trim  *time.Ticker
}

func newLoop(e *Engine) *loop {
	return &loop{
		e:           e,
		holding:     make(map[string]*held),
		lookForMore: true,
		outage:      outage{now: e.cfg.Now, jitter: e.cfg.Jitter},
		timer:       time.NewTimer(time.Hour),
		poll:        time.NewTicker(e.cfg.PollInterval),
		lease:       time.NewTicker(e.cfg.LeaseRefresh),
		trim:        time.NewTicker(e.cfg.TrimInterval),
	}
}

func (l *loop) stopTimers() {
	l.timer.Stop()
	l.poll.Stop()
	l.lease.Stop()
	l.trim.Stop()
}

// bounds are how many entries the loop holds. It keeps up to four times the
// concurrency ready to go, and claims in batches of a quarter of that rather
// than one entry per finished delivery. Failed entries wait in the store,
// not here, so failing payloads never keep the others from being claimed.
// Held entries carry no body: it is loaded for an attempt only, within the
// memory budget.
type bounds struct {
	ready, batch int
}

func boundsFor(s *Settings) bounds {
	ready := rateReady(s, 4*s.Concurrency)
	return bounds{ready: ready, batch: max(ready/4, 1)}
}

// serve runs rounds until the engine stops (true), or until a panic cuts
// one short (false; guard has logged it with its stack).
func (l *loop) serve() bool {
	return !guard.Run(l.e.logger(l.e.settings.Load()), "the delivery loop", func() {
		for l.round() {
		}
	})
}

// rebuild puts the loop back in order after a panic cut a round short,
// wherever it was: every held entry whose turn is not running waits in the
// due queue, and the next round claims. Turns that
// are running report as usual. Nothing held is dropped, so no entry stays
// claimed without the loop knowing it.
func (l *loop) rebuild() {
	clear(l.due)
	l.due = l.due[:0]
	for _, h := range l.holding {
		if h.attempting {
			continue
		}
		l.due = append(l.due, h)
	}
	heap.Init(&l.due)
	l.lookForMore = true
}

// pause waits for the next poll before the loop goes on after a panic, so
// one that happens every round is logged once a poll interval, not in a
// tight loop; turns that end meanwhile are taken in. It reports false if
// the engine stops meanwhile.
func (l *loop) pause() bool {
	for {
		select {
		case <-l.e.ctx.Done():
			return false
		case <-l.poll.C:
			return true
		case r := <-l.e.freed:
			l.freed(r)
		case r := <-l.e.results:
			l.finish(r)
		}
	}
}

// round claims what there is room for, starts the attempts that are due and
// waits for something to happen. It reports false once the engine stops.
func (l *loop) round() bool {
	s := l.e.settings.Load()
	l.outage.use(s)
	log := l.e.logger(s)
	b := boundsFor(s)
	now := l.e.cfg.Now()
	l.claimUnlessPaused(s, b, log, now)
	l.e.full.Store(len(l.holding) > b.ready-b.batch)
	if !l.e.pause.on.Load() {
		l.startDue(s, now)
	}
	return l.wait(s, log, now)
}

// claim takes more entries from the store when asked to and there is room.
// While the upstream is down it claims the probe only, when one may start
// and nothing held can be it: the others stay in the store.
func (l *loop) claim(b bounds, log *zap.Logger, now time.Time) {
	if !l.lookForMore {
		return
	}
	want := b.ready - len(l.holding)
	if l.outage.down() {
		if !l.outage.mayProbe(l.running, now) || l.probeHeld() {
			return
		}
		want = 1
	} else if len(l.holding) > b.ready-b.batch {
		return
	}
	ctx, cancel := context.WithTimeout(l.e.ctx, storeTimeout)
	entries, err := l.e.store.Claim(ctx, want)
	l.lookForMore = false
	if err != nil {
		cancel()
		if l.e.ctx.Err() == nil {
			l.e.claimErr.Fail(log, "cannot read the queue from the store; retrying", err)
		}
		return
	}
	l.e.claimErr.Ok(log, "store reachable again; delivering")
	l.hold(entries)
	// A full batch suggests more is waiting; a short one that nothing else
	// is due before the next retry, which the store is asked for.
	l.lookForMore = len(entries) == want
	if !l.lookForMore && !l.dueKnown {
		next, err := l.e.store.NextDue(ctx)
		if err == nil {
			l.nextDue, l.dueKnown = next, true
		}
	}
	cancel()
}

// probeHeld tells whether a held entry waits that can be the probe (an
// entry whose Ack or Bury is left over cannot).
func (l *loop) probeHeld() bool {
	for _, h := range l.due {
		if !h.acked && h.entry.Damaged == "" {
			return true
		}
	}
	return false
}

// releaseWaiting gives the held entries that wait for a place back to the
// store when the upstream went down: only the probe is held while it is.
// What the store cannot take back stays held.
func (l *loop) releaseWaiting(log *zap.Logger) {
	var ids []string
	for _, h := range l.due {
		if !h.acked && h.entry.Damaged == "" {
			ids = append(ids, h.entry.ID)
		}
	}
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(l.e.ctx, storeTimeout)
	defer cancel()
	if err := l.e.store.Release(ctx, ids); err != nil {
		log.Warn("cannot give queued payloads back to the store while the upstream is down; holding them",
			zap.Int("count", len(ids)), zap.Error(err))
		return
	}
	keep := l.due[:0]
	for _, h := range l.due {
		if h.acked || h.entry.Damaged != "" {
			keep = append(keep, h)
		} else {
			delete(l.holding, h.entry.ID)
		}
	}
	clear(l.due[len(keep):])
	l.due = keep
	heap.Init(&l.due)
}

// hold takes claimed entries in, due at once.
func (l *loop) hold(entries []*queue.Entry) {
	now := l.e.cfg.Now()
	for _, ent := range entries {
		if h, ok := l.holding[ent.ID]; ok {
			// Handed out again while held: its turn gave it back and it
			// is due again, or (a shared store) its claim lapsed, the
			// store unreachable longer than the visibility timeout. Either
			// way it is ours; what to do with it is decided when the turn
			// reports (finish).
			if h.attempting {
				h.again = ent
			}
			continue
		}
		h := &held{entry: ent, due: now}
		l.holding[ent.ID] = h
		heap.Push(&l.due, h)
	}
}

// startDue starts the attempts that are due, as many as there are places;
// while the upstream is down, only a probe when one is due.
func (l *loop) startDue(s *Settings, now time.Time) {
	for l.running < s.Concurrency && l.due.Len() > 0 && !l.due[0].due.After(now) {
		top := l.due[0]
		probing := l.outage.down() && !top.acked && top.entry.Damaged == ""
		if probing && !l.outage.mayProbe(l.running, now) {
			return
		}
		if needsStart(top) && !l.mayStart(s, now) {
			return
		}
		h := heap.Pop(&l.due).(*held)
		h.attempting = true
		l.running++
		l.busy++
		l.e.inFlight.Add(1)
		go l.e.deliver(s, h)
		if probing {
			l.outage.probing(h)
		}
	}
}

// wait waits for one thing to happen and takes it in. It reports false
// once the engine stops.
func (l *loop) wait(s *Settings, log *zap.Logger, now time.Time) bool {
	var fire <-chan time.Time
	if at, ok := l.wakeAt(s); ok {
		l.timer.Reset(at.Sub(now))
		fire = l.timer.C
	}
	select {
	case <-l.e.ctx.Done():
		return false
	case <-l.e.wake:
		l.lookForMore = true
	case <-l.poll.C:
		l.lookForMore = true
		l.dueKnown = false
	case <-l.lease.C:
		l.renew(log)
	case r := <-l.e.freed:
		l.freed(r)
	case r := <-l.e.results:
		l.finish(r)
	case <-l.trim.C:
		l.e.trimDead()
	case <-fire:
		if now := l.e.cfg.Now(); l.dueKnown && !l.nextDue.IsZero() && !now.Before(l.nextDue) {
			// a retry fell due: claim it, and ask the store for the next
			l.lookForMore, l.dueKnown = true, false
		}
		if l.outage.down() && !now.Before(l.outage.probeAt) {
			l.lookForMore = true
		}
	}
	return true
}

// wakeAt is when the loop has something to do unless woken before: start
// the first held entry that is due, or claim a retry that falls due (while
// the upstream is down: the next probe, once its backoff is over).
func (l *loop) wakeAt(s *Settings) (time.Time, bool) {
	var at time.Time
	ok := false
	if l.due.Len() > 0 && l.running < s.Concurrency && !l.e.pause.on.Load() {
		at, ok = l.outage.startAt(l.due[0].due, l.running)
		if ok && s.Limiter != nil && needsStart(l.due[0]) {
			at = later(at, l.rateAt)
		}
	}
	retry, next := l.dueKnown && !l.nextDue.IsZero(), l.nextDue
	if l.outage.down() {
		// The probe comes from the store only when none is held: the
		// loop looks when its backoff is over (something may be due
		// then), and after that when a retry falls due; a payload queued
		// meanwhile wakes it.
		if l.probeHeld() || l.outage.probe != nil || l.running > 0 {
			return at, ok
		}
		if l.outage.probeAt.After(l.e.cfg.Now()) {
			retry, next = true, l.outage.probeAt
		}
	}
	if retry && (!ok || next.Before(at)) {
		at, ok = next, true
	}
	return at, ok
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// renew extends the claims on the held entries, but not on those whose Ack
// or Bury is under way.
func (l *loop) renew(log *zap.Logger) {
	if len(l.holding) == 0 {
		return
	}
	ids := make([]string, 0, len(l.holding))
	for id, h := range l.holding {
		if !h.leaving.Load() {
			ids = append(ids, id)
		}
	}
	ctx, cancel := context.WithTimeout(l.e.ctx, storeTimeout)
	defer cancel()
	if err := l.e.store.Extend(ctx, ids); err != nil && l.e.ctx.Err() == nil {
		// Not found: finished meanwhile, or (shared stores) taken over by
		// another process after a stall; the upstream may then see it
		// twice, with the same Idempotency-Key.
		level := zap.WarnLevel
		if errors.Is(err, queue.ErrNotFound) {
			level = zap.DebugLevel
		}
		log.Log(level, "cannot extend claims on queued payloads", zap.Int("count", len(ids)), zap.Error(err))
	}
}

// finish takes in what an attempt reported: its entry left the engine
// (the queue, or back to the store as a retry), or it waits out a backoff
// here because the store could not take it back.
func (l *loop) finish(r result) {
	l.busy--
	r.h.attempting = false
	again := r.h.again
	r.h.again = nil
	if r.done {
		delete(l.holding, r.h.entry.ID)
		l.lookForMore = true
		if !r.retried.IsZero() && l.dueKnown && (l.nextDue.IsZero() || r.retried.Before(l.nextDue)) {
			l.nextDue = r.retried
		}
		if again != nil {
			// claimed again meanwhile: held now, not before it is due (a
			// lapsed claim handed out before the Retry is not due yet);
			// one that left the queue finds its body gone and is dropped
			h := &held{entry: again, due: later(l.e.cfg.Now(), r.retried)}
			l.holding[again.ID] = h
			heap.Push(&l.due, h)
		}
		return
	}
	r.h.due = r.next
	heap.Push(&l.due, r.h)
}

// freed takes back a turn's concurrency place and what it learnt of the
// upstream.
func (l *loop) freed(f freedPlace) {
	l.running--
	since := l.outage.since
	switch l.outage.freed(f.h, f.s, f.reach) {
	case wentDown:
		l.e.logger(f.s).Warn("upstream not answering; probing it with one payload at a time until it does",
			zap.Int("unanswered_attempts", l.outage.unanswered))
		if since.IsZero() { // not down already when the settings changed
			l.emitOutage(outageEvent{name: EventUpstreamDown, s: f.s, f: f, unanswered: l.outage.unanswered})
		}
		l.releaseWaiting(l.e.logger(f.s))
	case cameBack:
		l.e.logger(f.s).Info("upstream answering again; delivering")
		l.emitOutage(outageEvent{name: EventUpstreamUp, s: f.s, f: f, downFor: l.e.cfg.Now().Sub(since)})
	}
}

// drain waits for running attempts (Stop's grace bounds them) and gives
// everything still held back to the store.
func (l *loop) drain() {
	for l.running > 0 || l.busy > 0 {
		select {
		case r := <-l.e.freed:
			l.freed(r)
		case r := <-l.e.results:
			l.finish(r)
		}
	}
	if len(l.holding) == 0 {
		return
	}
	ids := make([]string, 0, len(l.holding))
	for id := range l.holding {
		ids = append(ids, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := l.e.store.Release(ctx, ids); err != nil {
		l.e.logger(l.e.settings.Load()).Warn("cannot release queued payloads at shutdown; they are delivered after their claims expire",
			zap.Int("count", len(ids)), zap.Error(err))
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
