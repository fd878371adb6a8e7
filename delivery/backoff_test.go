package delivery

import (
	"net/http"
	"testing"
	"time"
)

func TestBackoffDoublesAndCaps(t *testing.T) {
	b := Backoff{Initial: 250 * time.Millisecond, Max: 8 * time.Second}
	want := []time.Duration{250, 500, 1000, 2000, 4000, 8000, 8000, 8000}
	for i, w := range want {
		if got := b.Delay(i+1, 0.5); got != w*time.Millisecond {
			t.Errorf("failure %d: delay %s, want %s", i+1, got, w*time.Millisecond)
		}
	}
	if got := b.Delay(1000, 0.5); got != 8*time.Second {
		t.Errorf("after many failures: %s, want the cap", got)
	}
}

func TestBackoffJitterIsTwentyPercent(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: time.Minute}
	if lo := b.Delay(1, 0); lo != 800*time.Millisecond {
		t.Errorf("lowest jitter: %s, want 800ms", lo)
	}
	if hi := b.Delay(1, 0.999999); hi < 1199*time.Millisecond || hi > 1200*time.Millisecond {
		t.Errorf("highest jitter: %s, want just under 1.2s", hi)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		value string
		want  time.Duration
	}{
		{"", 0},
		{"3", 3 * time.Second},
		{"0", 0},
		{"-5", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	} {
		h := http.Header{}
		if tc.value != "" {
			h.Set("Retry-After", tc.value)
		}
		if got := retryAfter(h, now); got != tc.want {
			t.Errorf("Retry-After %q: %s, want %s", tc.value, got, tc.want)
		}
	}
}

func TestClassify(t *testing.T) {
	for status, want := range map[int]verdict{
		200: delivered, 201: delivered, 204: delivered,
		408: retry, 425: retry, 429: retry, 500: retry, 502: retry, 503: retry, 504: retry,
		400: dead, 401: dead, 404: dead, 410: dead, 422: dead, 301: dead, 308: dead,
	} {
		if got := classify(status, http.Header{}, time.Now()); got.verdict != want {
			t.Errorf("status %d: verdict %d, want %d", status, got.verdict, want)
		}
	}
}
