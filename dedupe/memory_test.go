package dedupe_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/dedupe"
	"github.com/hookrelay/caddy-webhook-relay/dedupe/storetest"
)

func newMemory(t testing.TB, opts dedupe.Options) dedupe.Store {
	s := dedupe.NewMemory(opts)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestMemory(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts dedupe.Options) dedupe.Store {
		return newMemory(t, opts)
	})
}

// The suite only asks for ids in admission order; Memory's also sort as
// strings, which is what its Dead paging relies on.
func TestMemoryIDsSortAsStrings(t *testing.T) {
	s := newMemory(t, dedupe.Options{Window: time.Hour})
	prev := ""
	for i := range 1100 {
		e := &dedupe.Entry{Key: "k" + strconv.Itoa(i)}
		if _, err := s.Admit(t.Context(), e); err != nil {
			t.Fatal(err)
		}
		if e.ID <= prev {
			t.Fatalf("id %q after %q does not sort after it", e.ID, prev)
		}
		prev = e.ID
	}
}

func BenchmarkMemoryAdmit(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) dedupe.Store {
		return newMemory(b, dedupe.Options{Window: 24 * time.Hour})
	})
}
