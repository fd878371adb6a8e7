package delivery

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// attemptRun is a held entry's turn, in a goroutine of its own: one attempt
// at the upstream (or, for an entry delivered already, its Ack; for a
// damaged one, its Bury) and the store's bookkeeping, then a report to the
// loop. It keeps track of what it holds, so that a panic anywhere in it
// gives that back (afterPanic).
type attemptRun struct {
	e   *Engine
	s   *Settings
	h   *held
	log *zap.Logger
	// placeHeld: the concurrency place is still taken (and counted in
	// flight).
	placeHeld bool
	// taken is the bytes of the memory budget held for the body, until
	// handed over to the attempt with it (handOver).
	taken int64
	// keepBody: the body is not the turn's to free: handed over to the
	// attempt, which frees it, or left in doubt by a panic (see freeBody).
	keepBody bool
	// reported: the loop has the entry back.
	reported bool
	// reach is what the attempt learnt of the upstream, for the loop,
	// with its answer's status and why it failed.
	reach  reach
	status int
	reason string
}

// deliver runs h's turn. The loop has counted it running and in flight.
func (e *Engine) deliver(s *Settings, h *held) {
	a := &attemptRun{e: e, s: s, h: h, log: e.logger(s), placeHeld: true}
	if guard.Run(a.log, "a delivery attempt's bookkeeping", a.run) {
		a.afterPanic()
	}
}

// afterPanic ends a turn that a panic cut short (guard has logged it with
// its stack). It gives back the body's bytes and the concurrency place if
// the turn still held them and, unless the loop has the entry back already
// (then the entry is no longer the turn's to touch), hands it back as a
// failed attempt, due after the backoff. The store still has the entry, so
// nothing is lost: at worst the upstream sees it again, with the same
// Idempotency-Key.
func (a *attemptRun) afterPanic() {
	a.giveBack()
	a.freePlace()
	if a.reported {
		return
	}
	if a.h.entry.Body != nil {
		a.keepBody = true // where the panic left it is unknown: never freed
		a.freeBody()
	}
	a.h.leaving.Store(false)
	a.report(result{h: a.h, next: a.retryIn()})
}

// run is the turn: the Ack left over from a delivery, the Bury of a
// damaged entry, or an attempt.
func (a *attemptRun) run() {
	switch {
	case a.h.acked:
		a.freePlace()
		a.ackAgain()
	case a.h.entry.Damaged != "":
		a.freePlace()
		a.buryDamaged()
	default:
		a.attempt()
	}
}

// attempt loads the body, sends it and settles the entry by the answer.
func (a *attemptRun) attempt() {
	ent := a.h.entry
	if err := a.loadBody(); err != nil {
		a.freePlace()
		a.bodyFailed(err)
		return
	}
	a.e.bodyErr.Ok(a.log, "store readable again; delivering")

	ent.Attempts++
	start := a.e.cfg.Now()
	o := a.send(start)
	took := a.e.cfg.Now().Sub(start)
	switch {
	case o.status != 0:
		a.reach = answered
	case o.unreachable:
		a.reach = unanswered
	}
	a.status, a.reason = o.status, o.reason
	// The attempt freed the body and gave back its budget (or left both
	// to the transport, which frees them when it lets go); the bookkeeping
	// below (a disk commit, a Redis round trip) must not hold a
	// concurrency place.
	a.freeBody()
	a.giveBack()
	a.freePlace()
	ent.LastStatus, ent.LastError = o.status, o.reason

	if o.verdict == retry && a.e.cfg.Now().Sub(ent.Queued) >= a.s.GiveUpAfter {
		o.verdict = dead
		ent.LastError = "gave up after " + a.s.GiveUpAfter.String() + "; last attempt: " + o.reason
	}
	a.record(o, start, took)
	switch o.verdict {
	case delivered:
		a.delivered(took)
	case dead:
		a.dead(took)
	default:
		a.failed(o, start, took)
	}
}

// record keeps the attempt in the payload's history (when the store keeps
// one), before the entry is acked, retried or buried: a crash between the
// two leaves a record one attempt ahead, never one behind.
func (a *attemptRun) record(o outcome, start time.Time, took time.Duration) {
	state := queue.StateRetrying
	switch o.verdict {
	case delivered:
		state = queue.StateDelivered
	case dead:
		state = queue.StateDead
	}
	at := queue.Attempt{Destination: destinationName(a.s), At: start, Status: o.status, DurationMS: took.Milliseconds()}
	if state != queue.StateDelivered {
		at.Error = a.h.entry.LastError
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := a.e.store.Attempted(ctx, a.h.entry, at, state); err != nil {
		a.e.recordErr.Fail(a.log, "cannot record attempts in the payloads' history; delivering on without", err)
		return
	}
	a.e.recordErr.Ok(a.log, "recording attempts in the payloads' history again")
}

// send makes the attempt. A panic in it (in the transport, say) is a
// failed attempt like any other: retried after the backoff, recorded, and
// counted against give_up_after.
func (a *attemptRun) send(start time.Time) (o outcome) {
	ent := a.h.entry
	// not the turn's to free from here: handOver gives it to the attempt,
	// and a panic before that leaves it in doubt
	a.keepBody = true
	late := false
	if guard.Run(a.log, "a delivery attempt", func() {
		sc, end := attemptSpan(a.e.attemptCx, a.e.tracerProvider(), a.e.cfg.Relay, a.s.destination(), ent, ent.Attempts)
		sent := newSentBodies(a.e.cfg.BodyWait, a.handOver())
		o, late = attempt(a.e.attemptCx, a.e.client, a.s, ent, ent.Attempts, start, sc, sent)
		end(o)
	}) {
		return outcome{verdict: retry, reason: "the attempt panicked (its stack is in the log)"}
	}
	if late {
		a.log.Warn("the HTTP transport still held a request body long after its attempt ended; its memory is freed when the transport lets go of it",
			zap.String("id", ent.ID), zap.Int("bytes", len(ent.Body)))
	}
	return o
}

// handOver gives the body, and the budget's bytes for it, to the attempt:
// the function it returns frees both, and the attempt calls it once the
// transport is done with the body, which may be long after the turn is
// over (then on the transport's goroutine, hence the copies). The budget
// stays taken as long as the memory is.
func (a *attemptRun) handOver() func() {
	body, taken, b := a.h.entry.Body, a.taken, a.e.cfg.Budget
	a.taken = 0
	return func() {
		bodybuf.Free(body)
		if taken != 0 {
			b.GiveFromDelivery(taken)
		}
	}
}

// freeBody drops the entry's body, and gives a mapped one (bodybuf) back
// to the system, unless it is not the turn's to free (keepBody): handed
// over to the attempt, or where a panic left it unknown (then it is left
// alone, for good, rather than freed under a transport).
func (a *attemptRun) freeBody() {
	if !a.keepBody {
		bodybuf.Free(a.h.entry.Body)
	}
	a.h.entry.Body = nil
	a.keepBody = false
}

// loadBody waits until the body fits in the memory budget, then reads it
// from the store into the entry. What it took from the budget is in
// a.taken, given back when the attempt is over.
func (a *attemptRun) loadBody() error {
	ent, b := a.h.entry, a.e.cfg.Budget
	if b != nil {
		// e.ctx, not the attempts' context: once stopping, no new attempt
		// starts, so nothing waits here through the grace
		if err := b.TakeForDelivery(a.e.ctx, int64(ent.BodySize)); err != nil {
			return err
		}
		a.taken = int64(ent.BodySize)
	}
	ctx, cancel := context.WithTimeout(a.e.ctx, storeTimeout)
	defer cancel()
	// ReadBody: a large body outside Go's heap, freed by freeBody the
	// moment the attempt is over, so that memory follows the budget
	body, err := a.e.store.ReadBody(ctx, ent.ID)
	if more := int64(len(body)) - a.taken; err == nil && more > 0 && b != nil {
		// the claim understated it (a record from an older version):
		// account for what is really held
		if err = b.TakeForDelivery(a.e.ctx, more); err == nil {
			a.taken += more
		}
	}
	if err != nil {
		bodybuf.Free(body)
		a.giveBack()
		return err
	}
	ent.Body = body
	return nil
}

// bodyFailed settles an entry whose body could not be read.
func (a *attemptRun) bodyFailed(err error) {
	switch {
	case errors.Is(err, queue.ErrNotFound):
		a.report(result{h: a.h, done: true}) // gone from the queue, see Bury
	case a.e.ctx.Err() != nil:
		a.report(result{h: a.h, next: a.e.cfg.Now()}) // stopping: released in drain
	default:
		a.e.bodyErr.Fail(a.log, "cannot read queued payloads from the store; retrying", err)
		a.report(result{h: a.h, next: a.retryIn()})
	}
}

// delivered removes an entry the upstream took. If the store cannot, the
// entry is kept and its Ack tried again later (ackAgain).
func (a *attemptRun) delivered(took time.Duration) {
	ent := a.h.entry
	a.h.leaving.Store(true)
	a.e.observe(a.log, ResultSuccess, took)
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	err := a.e.store.Ack(ctx, ent.ID)
	a.e.emitEntry(a.log, EventDelivered, a.s, ent)
	if err != nil {
		a.log.Error("payload delivered but the store could not remove it; it may be delivered again",
			zap.String("id", ent.ID), zap.Error(err))
		a.h.acked = true
		a.h.leaving.Store(false)
		a.report(result{h: a.h, next: a.retryIn()})
		return
	}
	a.report(result{h: a.h, done: true})
}

// ackAgain is the turn of an entry delivered already whose Ack failed.
func (a *attemptRun) ackAgain() {
	a.h.leaving.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := a.e.store.Ack(ctx, a.h.entry.ID); err != nil {
		a.h.leaving.Store(false)
		a.report(result{h: a.h, next: a.retryIn()})
		return
	}
	a.report(result{h: a.h, done: true})
}

// dead moves an entry the upstream refused, or gave up on, to the dead
// letters.
func (a *attemptRun) dead(took time.Duration) {
	ent := a.h.entry
	a.h.leaving.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	err := a.e.store.Bury(ctx, ent)
	switch {
	case errors.Is(err, queue.ErrNotFound):
		// Gone from the queue: another process delivered or buried it
		// after taking it over.
		a.report(result{h: a.h, done: true})
	case err != nil:
		a.e.observe(a.log, ResultRetry, took)
		a.log.Error("cannot move payload to the dead letters; it stays queued", zap.String("id", ent.ID), zap.Error(err))
		a.h.leaving.Store(false)
		a.report(result{h: a.h, next: a.retryIn()})
	default:
		a.e.observe(a.log, ResultDead, took)
		a.log.Warn("payload moved to the dead letters",
			zap.String("id", ent.ID), zap.Int("attempts", ent.Attempts),
			zap.Int("status", ent.LastStatus), zap.String("reason", ent.LastError))
		a.e.emitEntry(a.log, EventDeadLetter, a.s, ent)
		a.report(result{h: a.h, done: true})
		a.e.trimDead()
	}
}

// failed gives a failed entry back to the store, with its attempt, due
// again after the backoff, or after the upstream's Retry-After when that
// is longer.
func (a *attemptRun) failed(o outcome, start time.Time, took time.Duration) {
	ent := a.h.entry
	a.e.observe(a.log, ResultRetry, took)
	next := a.retryIn()
	if wait := start.Add(o.retryAfter); wait.After(next) {
		next = wait
	}
	// Not past give_up_after, whatever Retry-After asks: the last attempt
	// happens then, and a failure makes it a dead letter.
	if giveUp := ent.Queued.Add(a.s.GiveUpAfter); next.After(giveUp) {
		next = giveUp
	}
	// The entry waits in the store, not here: the engine holds only what
	// it attempts, however many payloads fail.
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	err := a.e.store.Retry(ctx, ent, next)
	switch {
	case errors.Is(err, queue.ErrNotFound):
		a.report(result{h: a.h, done: true}) // gone from the queue, see Bury
		return
	case err != nil:
		// the store keeps it claimed: it waits here instead
		a.log.Warn("cannot give a failed payload back to the store; retrying it from memory",
			zap.String("id", ent.ID), zap.Error(err))
		a.report(result{h: a.h, next: next})
		return
	}
	a.log.Debug("delivery failed; will retry",
		zap.String("id", ent.ID), zap.Int("attempt", ent.Attempts),
		zap.String("reason", o.reason), zap.Time("next", next))
	a.report(result{h: a.h, done: true, retried: next})
}

// buryDamaged moves an entry whose stored record cannot be read to the
// dead letters at once, so it never holds up the queue. If even that fails
// it is logged, and skipped until it can be buried.
func (a *attemptRun) buryDamaged() {
	ent := a.h.entry
	ent.LastError = ent.Damaged
	a.h.leaving.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	err := a.e.store.Bury(ctx, ent)
	switch {
	case err == nil:
		a.e.observe(a.log, ResultDead, 0)
		a.log.Error("queued payload cannot be read from the store; moved to the dead letters",
			zap.String("id", ent.ID), zap.String("reason", ent.Damaged))
		a.e.emitEntry(a.log, EventDeadLetter, a.s, ent)
		a.report(result{h: a.h, done: true})
		a.e.trimDead()
	case errors.Is(err, queue.ErrNotFound):
		a.report(result{h: a.h, done: true})
	default:
		a.h.leaving.Store(false)
		if ent.Attempts == 0 {
			a.log.Error("queued payload cannot be read from the store, nor moved to the dead letters; skipping it",
				zap.String("id", ent.ID), zap.String("reason", ent.Damaged), zap.Error(err))
		}
		ent.Attempts++
		a.report(result{h: a.h, next: a.retryIn()})
	}
}

// retryIn is when a failed entry is due again: after the backoff for the
// attempts it has had.
func (a *attemptRun) retryIn() time.Time {
	return a.e.cfg.Now().Add(a.s.Backoff.Delay(max(a.h.entry.Attempts, 1), a.e.cfg.Jitter()))
}

// giveBack returns the body's bytes to the memory budget.
func (a *attemptRun) giveBack() {
	if a.taken != 0 {
		a.e.cfg.Budget.GiveFromDelivery(a.taken)
		a.taken = 0
	}
}

// freePlace gives the attempt's concurrency place back. InFlight drops
// here, before the entry's bookkeeping, so no one sees an empty backlog with
// an attempt still counted in flight.
func (a *attemptRun) freePlace() {
	if !a.placeHeld {
		return
	}
	a.placeHeld = false
	a.e.inFlight.Add(-1)
	a.e.freed <- freedPlace{h: a.h, s: a.s, reach: a.reach, status: a.status, reason: a.reason}
}

// report hands the entry back to the loop.
func (a *attemptRun) report(r result) {
	a.reported = true
	a.e.results <- r
}
