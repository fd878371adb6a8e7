package delivery

import (
	"context"
	"slices"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/faultlog"
)

// DefaultDestination is the name of a relay's destination when its config
// names none: the one given by upstream.
const DefaultDestination = "upstream"

// destination is the name the store's pauses know s's destination by.
func (s *Settings) destination() string {
	if s.Destination == "" {
		return DefaultDestination
	}
	return s.Destination
}

// pauseView is what the engine knows of its destination's pause, which the
// store keeps (queue.Pauses): set by the operator through any process, so
// the engine reads it. The loop reads it after every claim that took
// something (so nothing claimed after a pause is attempted), at least once
// a poll interval, and at once when woken (a pause or resume in this
// process wakes the engine); while paused it claims nothing and starts
// nothing, and attempts already running finish.
type pauseView struct {
	on    atomic.Bool // paused, as last read; Engine.Paused
	stale atomic.Bool // read it again before the next round's claim: Wake
}

// Paused tells whether the engine holds back because its destination is
// paused, as it last read the store.
func (e *Engine) Paused() bool { return e.pause.on.Load() }

// pauseReads is the loop's bookkeeping of its reads of the pause.
type pauseReads struct {
	known bool      // read once at least
	at    time.Time // last read, by the process's clock: a cadence, not a schedule
	err   faultlog.Tracker
}

// claimUnlessPaused is the round's claim while the destination is not
// paused. While it is, it only reads the pause again when asked to look
// for more (a poll, a wake, an entry that left) and claims nothing; the
// moment the read shows the pause, it gives back what waits for a place.
func (l *loop) claimUnlessPaused(s *Settings, b bounds, log *zap.Logger, now time.Time) {
	stale := l.e.pause.stale.Swap(false) || !l.pauses.known || time.Since(l.pauses.at) >= l.e.cfg.PollInterval
	if l.e.pause.on.Load() {
		if !l.lookForMore && !stale {
			return
		}
		if l.readPause(s, log) {
			l.lookForMore = false
			return
		}
	} else if stale && !l.pauses.known && l.readPause(s, log) {
		return // paused before this engine started: claim nothing at all
	}
	held := len(l.holding)
	l.claim(b, log, now)
	// After the claim, not before: a pause set before the claim ran is
	// seen here, and what the claim took goes back unattempted.
	if len(l.holding) > held || stale {
		l.readPause(s, log)
	}
}

// readPause reads the pause from the store and reports whether the
// destination is paused. A store that cannot be read leaves the last state
// as it was (the claim meets the same store and fails too).
func (l *loop) readPause(s *Settings, log *zap.Logger) bool {
	ctx, cancel := context.WithTimeout(l.e.ctx, storeTimeout)
	paused, err := l.e.store.Paused(ctx)
	cancel()
	was := l.e.pause.on.Load()
	if err != nil {
		if l.e.ctx.Err() == nil {
			l.pauses.err.Fail(log, "cannot read the destination's pause from the store; retrying", err)
		}
		return was
	}
	l.pauses.err.Ok(log, "store readable again; the destination's pause is known")
	l.pauses.known, l.pauses.at = true, time.Now()
	on := slices.Contains(paused, s.destination())
	l.e.pause.on.Store(on)
	switch {
	case on && !was:
		log.Info("destination paused: payloads are accepted and wait in the store until it is resumed",
			zap.String("destination", s.destination()), zap.Int("attempts_running", l.running))
	case !on && was:
		log.Info("destination resumed; delivering", zap.String("destination", s.destination()))
		l.lookForMore = true
	}
	if on {
		l.releaseWaiting(log)
	}
	return on
}
