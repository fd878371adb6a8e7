package bolt_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

// The bytes kept are counted in the file, so max_stored holds across a
// restart: a store reopened full refuses what does not fit, and one that
// was emptied accepts again.
func TestBoltStoredSurvivesReopen(t *testing.T) {
	ctx := t.Context()
	clock := storetest.NewClock()
	opts := queue.Options{Window: time.Hour, MaxStored: 3000, Now: clock.Now}
	path := filepath.Join(t.TempDir(), "relay.db")
	s := openBolt(t, path, opts)
	admit := func(s queue.Store, key string, n int) (*queue.Entry, error) {
		e := &queue.Entry{Key: key, Body: []byte(strings.Repeat("x", n)),
			Request: queue.RequestMeta{Headers: []queue.HeaderField{{Name: "Webhook-Id", Value: key}}}}
		_, err := s.Admit(ctx, e)
		return e, err
	}
	a, _ := admit(s, "a", 1000)
	b, _ := admit(s, "b", 1000)
	claimed, err := s.Claim(ctx, 2)
	if err != nil || len(claimed) != 2 {
		t.Fatalf("Claim = %d, %v", len(claimed), err)
	}
	if err := s.Bury(ctx, claimed[1]); err != nil {
		t.Fatal(err)
	}
	want := queue.StoredSize(1000, a.Request.Headers) + queue.StoredSize(1000, b.Request.Headers)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openBolt(t, path, opts)
	st, err := s.Stats(ctx)
	if err != nil || st.Stored != want {
		t.Fatalf("Stats after reopen = %+v, %v; want stored %d", st, err, want)
	}
	// b, dead, gives way; a is queued and stays: 1011 + 2011 > 3000
	if _, err := admit(s, "c", 2000); !errors.Is(err, queue.ErrStoreFull) {
		t.Fatalf("Admit over the bound after reopen = %v, want ErrStoreFull", err)
	}
	if err := s.Ack(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openBolt(t, path, opts)
	if st, err := s.Stats(ctx); err != nil || st.Stored != 0 || st.Dead != 0 {
		t.Fatalf("Stats after the ack and a reopen = %+v, %v; want nothing stored", st, err)
	}
	if _, err := admit(s, "c", 2980); err != nil {
		t.Fatalf("Admit into the emptied store = %v", err)
	}
}
