package webhookrelay

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Dead letters giving way under max_stored are each counted, and logged
// once per episode: again only after a minute without any.
func TestEvictionsLoggedOncePerEpisode(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	counted := 0
	v := newEvictions(zap.New(core), func(n int) { counted += n })
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	v.now = func() time.Time { return now }

	for range 10 {
		v.evicted(2)
		now = now.Add(50 * time.Second) // never a minute apart
	}
	if counted != 20 || logs.Len() != 1 {
		t.Fatalf("10 removals of 2 letters: counted %d, logged %d times; want 20, once", counted, logs.Len())
	}
	now = now.Add(2 * time.Minute)
	v.evicted(1)
	if counted != 21 || logs.Len() != 2 {
		t.Fatalf("after a quiet minute: counted %d, logged %d times; want 21, twice", counted, logs.Len())
	}
	if got := logs.All()[0].ContextMap()["removed"]; got != int64(2) {
		t.Errorf("the log says removed %v, want 2", got)
	}
}
