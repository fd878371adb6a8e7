package delivery

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Backoff is the retry schedule: Initial after the first failure, doubling
// up to Max, each delay spread by +-20% so that payloads that failed together
// do not retry together.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

// Delay returns the wait after the given number of failed attempts (1 for
// the first failure). jitter is a number in [0, 1).
func (b Backoff) Delay(failures int, jitter float64) time.Duration {
	d := b.Initial
	for i := 1; i < failures && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return time.Duration(float64(d) * (0.8 + 0.4*jitter))
}

// randomJitter is the jitter source of real deliveries.
func randomJitter() float64 { return rand.Float64() }

// retryAfter parses a Retry-After header (seconds or an HTTP date) relative
// to now. It returns 0 when the header is absent or unusable.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
