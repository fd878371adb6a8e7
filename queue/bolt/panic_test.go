package bolt

import (
	"errors"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

func openHooked(t *testing.T, path string, opts queue.Options, hooks testHooks) (*Store, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	s, err := open(path, opts, zap.New(core), hooks)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, logs
}

// A panic in a group commit fails the calls of that group, and only those:
// no Admit waits for ever, what failed was not written (its key is not
// marked), and the admits after it commit.
func TestCommitterPanicFailsItsGroup(t *testing.T) {
	var commits atomic.Int32
	path := filepath.Join(t.TempDir(), "relay.db")
	s, logs := openHooked(t, path, queue.Options{Window: time.Hour}, testHooks{commit: func() {
		if commits.Add(1) == 1 {
			panic("injected panic in the commit")
		}
	}})
	ctx := t.Context()
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n { // at once, so the panic cuts a group of several short
		wg.Go(func() {
			_, errs[i] = s.Admit(ctx, &queue.Entry{Key: "k" + strconv.Itoa(i), Body: []byte("{}")})
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("admits still waiting 10s after the committer panicked")
	}

	failed := 0
	for i, err := range errs {
		key := "k" + strconv.Itoa(i)
		if err == nil {
			if a, err := s.Admit(ctx, &queue.Entry{Key: key}); err != nil || a != queue.Duplicate {
				t.Errorf("admit of %s again = %v, %v; it was accepted, so want duplicate", key, a, err)
			}
			continue
		}
		if !errors.Is(err, errBoltCommitPanicked) {
			t.Fatalf("admit of %s: %v, want the commit's panic", key, err)
		}
		failed++
		if a, err := s.Admit(ctx, &queue.Entry{Key: key, Body: []byte("{}")}); err != nil || a != queue.Accepted {
			t.Errorf("admit of %s after its commit panicked = %v, %v; want accepted (nothing was written)", key, a, err)
		}
	}
	if failed == 0 {
		t.Fatal("no admit saw the panic")
	}
	testkit.PanicLogged(t, logs, "panic_test.go", testkit.Panic{Running: "the bolt store's committer", Value: "injected panic in the commit"})
	if st, err := s.Stats(ctx); err != nil || st.Backlog != n || st.Keys != n {
		t.Errorf("Stats = %+v, %v; want backlog and keys %d: the failed admits' reservations given back", st, err, n)
	}

	// what committed is on disk
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path, queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got, err := s2.Claim(ctx, 2*n); err != nil || len(got) != n {
		t.Errorf("after reopening: claimed %d, %v; want %d", len(got), err, n)
	}
}

// A panic in the background sweep ends that sweep only: the marker it would
// have removed is removed by the next one.
func TestSweeperPanicSweepsLater(t *testing.T) {
	clock := storetest.NewClock()
	expired := clock.Now().Add(time.Hour)
	var sweeps atomic.Int32
	swept := make(chan struct{})
	s, logs := openHooked(t, filepath.Join(t.TempDir(), "relay.db"), queue.Options{Window: time.Hour, Now: clock.Now},
		testHooks{sweepEvery: time.Millisecond, sweep: func() {
			if clock.Now().Before(expired) {
				return // nothing to sweep yet
			}
			switch sweeps.Add(1) {
			case 1:
				panic("injected panic in the sweep") // before it deletes anything
			case 3:
				close(swept) // so the second one is over
			}
		}})
	ctx := t.Context()
	if _, err := s.Admit(ctx, &queue.Entry{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour + time.Second)

	select {
	case <-swept:
	case <-time.After(10 * time.Second):
		t.Fatalf("%d sweeps within 10s of the marker expiring, want 3", sweeps.Load())
	}
	if st, err := s.Stats(ctx); err != nil || st.Keys != 0 {
		t.Errorf("Stats = %+v, %v; want the expired marker swept", st, err)
	}
	testkit.PanicLogged(t, logs, "panic_test.go", testkit.Panic{Running: "the bolt store's sweep of expired markers", Value: "injected panic in the sweep"})
}
