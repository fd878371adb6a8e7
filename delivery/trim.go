package delivery

import (
	"context"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// trimBatch bounds the dead letters one TrimDead call removes.
const trimBatch = 256

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
	go e.trimmer()
}

// trimmer trims while asked to, then lets the next trimDead start another.
func (e *Engine) trimmer() {
	defer e.trims.Done()
	for e.trimMore.Swap(false) && e.ctx.Err() == nil {
		e.trimOnce(e.settings.Load())
	}
	e.trimming.Store(false)
	if e.trimMore.Load() {
		e.trimDead() // asked for between the loop's end and now
	}
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
