package ratelimit

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for s, want := range map[string]Rate{
		"5/s":       {5, time.Second},
		"300/m":     {300, time.Minute},
		" 1/m ":     {1, time.Minute},
		"1000000/s": {1000000, time.Second},
	} {
		got, err := Parse(s)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for s, want := range map[string]string{
		"0/s":                    "a rate of 0",
		"0/m":                    "a rate of 0",
		"5":                      "a rate needs a unit: 5/s or 300/m",
		"5/":                     "a rate needs a unit",
		"5/h":                    `unknown unit "h"`,
		"5/0s":                   `unknown unit "0s"`,
		"5/second":               `unknown unit "second"`,
		"-1/s":                   "cannot be negative",
		"+5/s":                   "not a whole number",
		"1.5/s":                  "not a whole number",
		"/s":                     "not a whole number",
		"":                       "a rate needs a unit",
		"2000000/s":              "too high",
		"99999999999999999999/s": "too large",
	} {
		_, err := Parse(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v; want an error saying %q", s, err, want)
		}
	}
}

func TestRateText(t *testing.T) {
	var v struct{ Rate Rate }
	if err := json.Unmarshal([]byte(`{"Rate":"300/m"}`), &v); err != nil || v.Rate != (Rate{300, time.Minute}) {
		t.Fatalf("unmarshal: %v, %v", v.Rate, err)
	}
	if v.Rate.Interval() != 200*time.Millisecond {
		t.Errorf("Interval = %s", v.Rate.Interval())
	}
	b, _ := json.Marshal(v)
	if string(b) != `{"Rate":"300/m"}` {
		t.Errorf("marshal = %s", b)
	}
	if err := json.Unmarshal([]byte(`{"Rate":"0/s"}`), &v); err == nil {
		t.Error("0/s unmarshalled")
	}
}

// checkSpread checks starts (in order) the way the destinations feature is
// measured: n starts spread over at least minSpread, and no one-second
// window (half-open) holding more than maxPerSecond.
func checkSpread(t *testing.T, starts []time.Time, minSpread time.Duration, maxPerSecond int) {
	t.Helper()
	if spread := starts[len(starts)-1].Sub(starts[0]); spread < minSpread {
		t.Errorf("%d starts within %s, want at least %s", len(starts), spread, minSpread)
	}
	for i := range starts {
		n := 0
		for j := i; j < len(starts) && starts[j].Sub(starts[i]) < time.Second; j++ {
			n++
		}
		if n > maxPerSecond {
			t.Errorf("%d starts within one second from start %d (%s), want at most %d", n, i, starts[i].Sub(starts[0]), maxPerSecond)
			return
		}
	}
}

// TestLocalSpread: 30 starts at 5/s through a loop that asks again when it
// is told to wait, on a fake clock: one every 200 ms, never a burst.
func TestLocalSpread(t *testing.T) {
	for _, r := range []Rate{{5, time.Second}, {300, time.Minute}} {
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		l := NewLocal(r, func() time.Time { return now })
		var starts []time.Time
		for asks := 0; len(starts) < 30; asks++ {
			if asks > 1000 {
				t.Fatal("no progress")
			}
			wait, err := l.Take(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if wait == 0 {
				starts = append(starts, now)
				continue
			}
			if wait > r.Interval() {
				t.Fatalf("told to wait %s, more than the interval %s", wait, r.Interval())
			}
			now = now.Add(wait)
		}
		checkSpread(t, starts, 4*time.Second, 5)
		for i := 1; i < len(starts); i++ {
			if d := starts[i].Sub(starts[i-1]); d < 200*time.Millisecond {
				t.Fatalf("%s: starts %d and %d %s apart, want 200ms", r, i-1, i, d)
			}
		}
		// Asking too early takes nothing: the next start still waits.
		if w, _ := l.Take(t.Context()); w == 0 {
			t.Errorf("%s: a start right after the last one", r)
		}
		now = now.Add(10 * time.Second) // idle: still no burst after it
		if w, _ := l.Take(t.Context()); w != 0 {
			t.Errorf("%s: no start after an idle time", r)
		}
		if w, _ := l.Take(t.Context()); w == 0 {
			t.Errorf("%s: two starts at once after an idle time", r)
		}
	}
}

// TestLocalConcurrent: many loops asking one limiter at once on the real
// clock get one start per interval between them.
func TestLocalConcurrent(t *testing.T) {
	l := NewLocal(Rate{100, time.Second}, nil) // every 10 ms
	deadline := time.Now().Add(200 * time.Millisecond)
	got := make(chan int)
	for range 8 {
		go func() {
			n := 0
			for time.Now().Before(deadline) {
				if w, _ := l.Take(t.Context()); w == 0 {
					n++
				} else {
					time.Sleep(w)
				}
			}
			got <- n
		}()
	}
	total := 0
	for range 8 {
		total += <-got
	}
	if total > 21 { // 200 ms / 10 ms, and the first one free
		t.Errorf("%d starts in 200ms at 100/s", total)
	}
}
