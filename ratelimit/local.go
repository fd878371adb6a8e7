package ratelimit

import (
	"context"
	"time"

	"golang.org/x/time/rate"
)

// Local is a Limiter for one process, over golang.org/x/time/rate with a
// burst of 1: starts are at least Rate.Interval apart. It is safe for
// concurrent use.
type Local struct {
	r   Rate
	lim *rate.Limiter
	now func() time.Time
}

// NewLocal returns a Local limiter for r. now is the clock, time.Now when
// nil (a test passes its own).
func NewLocal(r Rate, now func() time.Time) *Local {
	if now == nil {
		now = time.Now
	}
	return &Local{r: r, lim: rate.NewLimiter(rate.Every(r.Interval()), 1), now: now}
}

// Take implements Limiter; it never fails.
func (l *Local) Take(context.Context) (time.Duration, error) {
	now := l.now()
	if l.lim.AllowN(now, 1) {
		return 0, nil
	}
	// The missing part of a token, in time.
	wait := time.Duration((1 - l.lim.TokensAt(now)) * float64(l.r.Interval()))
	if wait <= 0 {
		wait = time.Nanosecond
	}
	return wait, nil
}

// Rate is the limiter's rate.
func (l *Local) Rate() Rate { return l.r }
