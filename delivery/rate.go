package delivery

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// How the loop keeps a destination's rate (Settings.Limiter).
//
// The limiter is asked in startDue, in the loop's goroutine, just before an
// attempt would start: when it says wait, nothing starts and the loop's
// one timer is set for then (wakeAt), so no goroutine sleeps and the
// engine's stop ends the wait like any other. Only attempts take a start:
// an entry whose Ack or Bury is left over goes out without asking.
//
// Entries claimed wait for their start in the loop, with their claims
// extended as usual; to hold none longer than needed, a rate bounds what
// the loop claims to the starts of about a second (rateReady), so at 1/m
// it holds one entry and the rest wait in the store, where other instances
// of a shared store may take them.
//
// A limiter that fails (its Redis unreachable) starts nothing: the loop
// logs once, asks again after rateErrorWait, and logs again once it
// answers.

// rateErrorWait is how long the loop waits before it asks a limiter that
// failed again.
var rateErrorWait = time.Second // a variable for tests

// rateAskTimeout bounds one question to a limiter (a round trip to Redis).
const rateAskTimeout = 2 * time.Second

// rateReady bounds the entries the loop holds ready under a rate: the starts
// of about a second, at least one, at most ready.
func rateReady(s *Settings, ready int) int {
	if s.Limiter == nil || s.Rate.IsZero() {
		return ready
	}
	perSecond := int((int64(s.Rate.N)*int64(time.Second) + int64(s.Rate.Per) - 1) / int64(s.Rate.Per))
	return min(ready, max(perSecond, 1))
}

// needsStart tells whether h's turn is an attempt, which takes a start
// from the rate; an entry only left to Ack or Bury does not.
func needsStart(h *held) bool {
	return !h.acked && h.entry.Damaged == ""
}

// mayStart asks the limiter for one start now. It reports false when none
// may start yet, having set l.rateAt to when to ask again.
func (l *loop) mayStart(s *Settings, now time.Time) bool {
	if s.Limiter == nil {
		return true
	}
	if now.Before(l.rateAt) {
		return false
	}
	ctx, cancel := context.WithTimeout(l.e.ctx, rateAskTimeout)
	wait, err := s.Limiter.Take(ctx)
	cancel()
	log := l.e.logger(s)
	if err != nil {
		if l.e.ctx.Err() == nil {
			l.e.rateErr.Fail(log, "cannot ask the destination's rate limit; starting no delivery until it answers", err,
				zap.String("rate", s.Rate.String()))
		}
		l.rateAt = l.e.cfg.Now().Add(rateErrorWait)
		return false
	}
	l.e.rateErr.Ok(log, "the destination's rate limit answers again; delivering")
	if wait > 0 {
		l.rateAt = l.e.cfg.Now().Add(wait)
		return false
	}
	return true
}
