package redis_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/redis"
)

// With WaitReplicas an admit is Accepted only once a replica has the
// entry; without the replica it fails within the timeout, and the retry of
// the payload, which did land on the master, is a duplicate.
func TestRedisWaitReplicas(t *testing.T) {
	master := redistest.Start(t, redistest.Options{})
	replica := redistest.Start(t, redistest.Options{ReplicaOf: master})
	if err := replica.WaitSynced(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	prefix := uniquePrefix()
	const timeout = 300 * time.Millisecond
	s, err := redis.New(context.Background(), newClient(master.Addr()), redis.Config{
		Prefix: prefix, Consumer: "c", WaitReplicas: 1, WaitReplicasTimeout: timeout,
	}, queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	for _, k := range []string{"a", "b", "c"} {
		admit(t, s, k)
		// accepted means the replica has it: read it there, at once
		out, err := redistest.Cmd(replica.Addr(), "EXISTS", "{"+prefix+"}:seen:"+k)
		if err != nil || strings.TrimSpace(out) != "1" {
			t.Fatalf("key %s accepted but not on the replica: %q %v", k, out, err)
		}
	}

	replica.Kill()
	start := time.Now()
	got, err := s.Admit(t.Context(), &queue.Entry{Key: "d", Body: []byte(`{}`)})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "replicas") {
		t.Fatalf("admit without the replica = %v, %v; want an error naming the replicas", got, err)
	}
	if took < timeout || took > timeout+2*time.Second {
		t.Errorf("the failed admit took %s; want about the wait_replicas timeout %s", took, timeout)
	}
	// the sender's retry: the payload is on the master, so it is a duplicate
	if got, err := s.Admit(t.Context(), &queue.Entry{Key: "d", Body: []byte(`{}`)}); err != nil || got != queue.Duplicate {
		t.Errorf("retry of d = %v, %v; want Duplicate", got, err)
	}
}
