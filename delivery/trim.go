package delivery

import (
	"context"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
)

// trimHistory removes the records whose history ran out, a batch at a
// time.
func (e *Engine) trimHistory(s *Settings) {
	for e.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(e.ctx, storeTimeout)
		n, err := e.store.TrimHistory(ctx, trimBatch)
		cancel()
		if err != nil {
			if e.ctx.Err() == nil {
				e.trimErr.Fail(e.logger(s), "cannot remove old records of the history; trying again later", err)
			}
			return
		}
		if n < trimBatch {
			return
		}
	}
}

// trimBatch bounds the dead letters one TrimDead call removes.
const trimBatch = 256

// trimDead removes the dead letters past MaxDead or DeadRetention, in the
// background, logging and reporting each one. A call while a trim runs
// makes that trim go round once more.
func (e *Engine) trimDead() {
	s := e.settings.Load()
	if s.MaxDead <= 0 && s.DeadRetention <= 0 && e.store.recorder() == nil {
		return
	}
	e.trimMore.Store(true)
	if !e.trimming.CompareAndSwap(false, true) {
		return
	}
	e.trimsMu.Lock()
	defer e.trimsMu.Unlock()
	if e.trimsDone { // stopped: the next start trims
		e.trimming.Store(false)
		return
	}
	e.trims.Add(1)
	go e.trimmer()
}

// trimmer trims while asked to, then lets the next trimDead start another.
// A panic ends one trim, logged with its stack; the next one is asked for
// by the next dead letter or TrimInterval.
func (e *Engine) trimmer() {
	defer e.trims.Done()
	for e.trimMore.Swap(false) && e.ctx.Err() == nil {
		s := e.settings.Load()
		guard.Run(e.logger(s), "the trim of the dead letters", func() { e.trimOnce(s) })
	}
	e.trimming.Store(false)
	if e.trimMore.Load() {
		e.trimDead() // asked for between the loop's end and now
	}
}

func (e *Engine) trimOnce(s *Settings) {
	e.trimHistory(s)
	if s.MaxDead <= 0 && s.DeadRetention <= 0 {
		return
	}
	log := e.logger(s)
	var cutoff time.Time
	if s.DeadRetention > 0 {
		cutoff = e.cfg.Now().Add(-s.DeadRetention)
	}
	for e.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(e.ctx, storeTimeout)
		gone, err := e.store.TrimDead(ctx, s.MaxDead, cutoff, trimBatch)
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
				// each letter is logged and reported, whatever the others do
				guard.Run(log, "the dead-letter observer", func() { e.cfg.DeadDropped(d) })
			}
		}
		if len(gone) < trimBatch {
			return
		}
	}
}
