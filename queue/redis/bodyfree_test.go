package redis

import (
	"context"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// A ReadBody that fails halfway (here: no body bytes may be in flight
// until its deadline) gives its mapped buffer back: a buffer outside the
// heap that is not freed is never collected.
func TestReadBodyFreesItsBufferOnFailure(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	client := goredis.NewUniversalClient(&goredis.UniversalOptions{Addrs: []string{srv.Addr()}, MaxRetries: -1, PipelinePoolSize: -1})
	s, err := New(t.Context(), client, Config{Prefix: "bodyfree", Consumer: "c1"}, queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e := &queue.Entry{Key: "k", Body: make([]byte, 300<<10)}
	if _, err := s.Admit(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	if err := s.bodies.Acquire(t.Context(), bodyBytesInFlight); err != nil {
		t.Fatal(err)
	}
	defer s.bodies.Release(bodyBytesInFlight)
	before := bodybuf.Mapped()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if body, err := s.ReadBody(ctx, e.ID); err == nil {
		t.Fatalf("ReadBody with no body bytes to take: %d bytes, no error", len(body))
	}
	if leaked := bodybuf.Mapped() - before; leaked != 0 {
		t.Errorf("a failed ReadBody left %d bytes mapped", leaked)
	}
}
