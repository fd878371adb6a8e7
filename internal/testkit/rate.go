package testkit

import (
	"slices"
	"testing"
	"time"
)

// CheckRate checks arrival times the way a destination's rate is measured:
// they span at least minSpread from first to last, and no one second
// (a sliding window, half-open) holds more than maxPerSecond of them.
func CheckRate(t testing.TB, at []time.Time, minSpread time.Duration, maxPerSecond int) {
	t.Helper()
	at = slices.Clone(at)
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	if len(at) < 2 {
		t.Fatalf("%d arrivals: nothing to measure", len(at))
	}
	if spread := at[len(at)-1].Sub(at[0]); spread < minSpread {
		t.Errorf("%d arrivals within %s, want them spread over at least %s", len(at), spread, minSpread)
	}
	most := 0
	for i := range at {
		n := 0
		for j := i; j < len(at) && at[j].Sub(at[i]) < time.Second; j++ {
			n++
		}
		most = max(most, n)
		if n > maxPerSecond {
			t.Errorf("%d arrivals within one second from arrival %d (at +%s), want at most %d",
				n, i, at[i].Sub(at[0]).Round(time.Millisecond), maxPerSecond)
			return
		}
	}
	t.Logf("%d arrivals over %s, at most %d within any one second",
		len(at), at[len(at)-1].Sub(at[0]).Round(time.Millisecond), most)
}
