package redis_test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/redis"
)

// openWaiting opens a store on master under prefix that waits for one
// replica (WaitReplicas 1) for at most timeout.
func openWaiting(t *testing.T, master *redistest.Server, prefix, consumer string, timeout time.Duration) *redis.Store {
	t.Helper()
	s, err := redis.New(context.Background(), newClient(master.Addr()), redis.Config{
		Prefix: prefix, Consumer: consumer, WaitReplicas: 1, WaitReplicasTimeout: timeout,
	}, queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// wantReplicasError fails t unless err is the admit error that names the
// replicas (the relay answers it 503).
func wantReplicasError(t *testing.T, what string, got queue.Admission, err error) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), "replicas") {
		t.Errorf("%s = %v, %v; want the error naming the replicas (503), not a 200", what, got, err)
	}
}

// With WaitReplicas an admit is Accepted only once a replica has the
// entry; without the replica it fails within the timeout, and so do the
// sender's retries of the payload, which did land on the master, on this
// instance and on another: a duplicate is answered only once the replica
// has it too.
func TestRedisWaitReplicas(t *testing.T) {
	master := redistest.Start(t, redistest.Options{})
	replica := redistest.Start(t, redistest.Options{ReplicaOf: master})
	if err := replica.WaitSynced(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	prefix := uniquePrefix()
	const timeout = 300 * time.Millisecond
	s := openWaiting(t, master, prefix, "c", timeout)
	other := openWaiting(t, master, prefix, "c2", timeout)

	for _, k := range []string{"a", "b", "c"} {
		admit(t, s, k)
		// accepted means the replica has it: read it there, at once
		out, err := redistest.Cmd(replica.Addr(), "EXISTS", "{"+prefix+"}:seen:"+k)
		if err != nil || strings.TrimSpace(out) != "1" {
			t.Fatalf("key %s accepted but not on the replica: %q %v", k, out, err)
		}
	}

	replica.Kill()
	d := func() *queue.Entry { return &queue.Entry{Key: "d", Body: []byte(`{}`)} }
	start := time.Now()
	got, err := s.Admit(t.Context(), d())
	took := time.Since(start)
	wantReplicasError(t, "admit without the replica", got, err)
	if took < timeout || took > timeout+2*time.Second {
		t.Errorf("the failed admit took %s; want about the wait_replicas timeout %s", took, timeout)
	}
	// the sender's retries: the payload is on the master only, so no 200
	got, err = s.Admit(t.Context(), d())
	wantReplicasError(t, "retry of d without the replica", got, err)
	got, err = other.Admit(t.Context(), d())
	wantReplicasError(t, "retry of d on another instance without the replica", got, err)

	replica.Restart()
	if err := replica.WaitSynced(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for i, st := range []*redis.Store{s, other} {
		if got, err := st.Admit(t.Context(), d()); err != nil || got != queue.Duplicate {
			t.Errorf("retry of d once the replica is back (instance %d) = %v, %v; want Duplicate", i+1, got, err)
		}
	}
}

// A duplicate's 200 waits for the replica even when the retry reaches a
// connection that did not store the payload, and the replica is connected
// but behind (stopped with SIGSTOP: its link stays up, so WAIT counts it
// at the offset it last acknowledged). WAIT only covers the writes of its
// own connection: the duplicate's admit writes too, so that its WAIT
// covers the original write, which came before it. The same for an admit
// run again under its token (its reply lost, sent again on another
// connection).
func TestRedisWaitReplicasDuplicateOnAnotherConnection(t *testing.T) {
	master := redistest.Start(t, redistest.Options{})
	replica := redistest.Start(t, redistest.Options{ReplicaOf: master})
	if err := replica.WaitSynced(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	prefix := uniquePrefix()
	const timeout = 300 * time.Millisecond
	s := openWaiting(t, master, prefix, "c", timeout)
	other := openWaiting(t, master, prefix, "c2", timeout)
	admit(t, other, "warm") // other's connection wrote, and the replica acknowledged it

	pid := replica.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)

	p := func() *queue.Entry { return &queue.Entry{Key: "p", Body: []byte(`{}`)} }
	got, err := s.Admit(t.Context(), p())
	wantReplicasError(t, "admit with the replica stopped", got, err)
	got, err = other.Admit(t.Context(), p())
	wantReplicasError(t, "retry on another instance with the replica stopped", got, err)

	now := time.Now()
	e := &queue.Entry{Key: "t", Body: []byte(`{}`)}
	if res, err := redis.AdmitWaitingOnce(t.Context(), s, e, "token-t", now); err == nil {
		t.Fatalf("admit under token-t with the replica stopped = %v; want the replicas error", res)
	}
	if res, err := redis.AdmitWaitingOnce(t.Context(), other, e, "token-t", now); err == nil ||
		!strings.Contains(err.Error(), "replicas") {
		t.Errorf("the same admit sent again on another connection = %v, %v; want the replicas error", res, err)
	}

	resume()
	if got, err := other.Admit(t.Context(), p()); err != nil || got != queue.Duplicate {
		t.Errorf("retry once the replica runs again = %v, %v; want Duplicate", got, err)
	}
	if res, err := redis.AdmitWaitingOnce(t.Context(), other, e, "token-t", now); err != nil || res[0] != int64(0) {
		t.Errorf("the admit under token-t once the replica runs again = %v, %v; want accepted", res, err)
	}
	for _, k := range []string{"p", "t"} {
		out, err := redistest.Cmd(replica.Addr(), "EXISTS", "{"+prefix+"}:seen:"+k)
		if err != nil || strings.TrimSpace(out) != "1" {
			t.Errorf("key %s answered 200 but not on the replica: %q %v", k, out, err)
		}
	}
}
