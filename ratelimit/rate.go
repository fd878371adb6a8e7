// Package ratelimit spaces the attempts a delivery loop starts for one
// destination: at most n attempts start within any one unit, spread evenly
// unit/n apart rather than in a burst. Local limits one process (the bolt
// and memory stores); Redis shares one limit among every instance on a
// Redis store.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Rate is at most N attempts started within any one Per.
type Rate struct {
	N   int
	Per time.Duration
}

// Parse parses "<n>/<unit>", where n is a positive integer and the unit s
// (a second) or m (a minute): "5/s", "300/m".
func Parse(s string) (Rate, error) {
	num, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: a rate needs a unit: 5/s or 300/m", s)
	}
	n, err := strconv.Atoi(num)
	switch {
	case err != nil && errors.Is(err, strconv.ErrRange):
		return Rate{}, fmt.Errorf("rate %q: %s is too large", s, num)
	case err != nil || strings.HasPrefix(num, "+"):
		return Rate{}, fmt.Errorf("rate %q: %q is not a whole number of attempts", s, num)
	case n == 0:
		return Rate{}, fmt.Errorf("rate %q: a rate of 0 would deliver nothing; pause the destination instead", s)
	case n < 0:
		return Rate{}, fmt.Errorf("rate %q: a rate cannot be negative", s)
	}
	var per time.Duration
	switch unit {
	case "s":
		per = time.Second
	case "m":
		per = time.Minute
	case "":
		return Rate{}, fmt.Errorf("rate %q: a rate needs a unit: 5/s or 300/m", s)
	default:
		return Rate{}, fmt.Errorf("rate %q: unknown unit %q: the unit is s (a second) or m (a minute)", s, unit)
	}
	r := Rate{N: n, Per: per}
	if r.Interval() < time.Microsecond {
		return Rate{}, fmt.Errorf("rate %q: too high: at most 1000000/s", s)
	}
	return r, nil
}

// String returns the rate as Parse reads it.
func (r Rate) String() string {
	unit := "s"
	if r.Per == time.Minute {
		unit = "m"
	}
	return strconv.Itoa(r.N) + "/" + unit
}

// Interval is the time between two starts, Per/N.
func (r Rate) Interval() time.Duration {
	if r.N <= 0 {
		return 0
	}
	return r.Per / time.Duration(r.N)
}

// IsZero reports whether r is no rate at all (no limit).
func (r Rate) IsZero() bool { return r == Rate{} }

// MarshalText implements encoding.TextMarshaler: a Rate is "5/s" in JSON.
func (r Rate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with Parse.
func (r *Rate) UnmarshalText(b []byte) error {
	p, err := Parse(string(b))
	if err != nil {
		return err
	}
	*r = p
	return nil
}

// Limiter is what a delivery loop asks before it starts an attempt for its
// destination.
type Limiter interface {
	// Take takes the right to start one attempt now and returns 0. When
	// no start is free now it takes nothing and returns how long until
	// one may be (always more than 0): the loop leaves the payload be
	// and asks again then, holding no goroutine meanwhile. An error (the
	// shared limit's Redis unreachable) takes nothing either: the caller
	// starts no attempt and asks again later, as after any store error.
	Take(ctx context.Context) (wait time.Duration, err error)
}
