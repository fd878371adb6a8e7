package redis_test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
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
// connection). (Redis 7.0 takes a connection's offset after reads too, so
// there this test passes without that write; on Redis 7.2.6 it fails
// without it.)
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

// With DurableAck a duplicate's 200 waits for the AOF fsync too: with the
// AOF turned off under the relay (WAITAOF then fails), the first send and
// its retries fail; once it is on again, the retry is Duplicate. That needs
// Redis >= 7.2 (WAITAOF) first on PATH; on an older one the test checks
// that durable_ack is refused at open, saying so.
func TestRedisDurableAckDuplicate(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	c := newClient(srv.Addr())
	s, err := redis.New(t.Context(), c, redis.Config{
		Prefix: uniquePrefix(), Consumer: "c", DurableAck: true, DurableAckTimeout: 300 * time.Millisecond,
	}, queue.Options{Window: time.Hour})
	if err != nil {
		c.Close()
		// A Redis before 7.2 (Debian 12's is 7.0) has no WAITAOF: there the
		// user sees the store refuse durable_ack at open, saying what it
		// needs, and that refusal is what this test checks.
		info, _ := srv.Info("server")
		_, version, _ := strings.Cut(info, "redis_version:")
		version, _, _ = strings.Cut(version, "\n")
		version = strings.TrimSpace(version)
		var major, minor int
		fmt.Sscanf(version, "%d.%d", &major, &minor)
		if major < 7 || major == 7 && minor < 2 {
			for _, want := range []string{"durable_ack needs WAITAOF", "Redis >= 7.2"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("durable_ack on Redis %s: error %q does not say %q", version, err, want)
				}
			}
			t.Logf("Redis %s has no WAITAOF: checked its refusal; the duplicate's wait needs Redis >= 7.2 first on PATH", version)
			return
		}
		t.Fatal(err)
	}
	defer s.Close()
	admit(t, s, "a")

	aof := func(on string) {
		t.Helper()
		if out, err := redistest.Cmd(srv.Addr(), "CONFIG", "SET", "appendonly", on); err != nil || strings.TrimSpace(out) != "OK" {
			t.Fatalf("CONFIG SET appendonly %s: %q %v", on, out, err)
		}
	}
	aof("no")
	d := func() *queue.Entry { return &queue.Entry{Key: "d", Body: []byte(`{}`)} }
	for i := range 3 { // the first send, then two retries
		if got, err := s.Admit(t.Context(), d()); err == nil {
			t.Errorf("admit %d of d with the AOF off = %v; want an error (503), not a 200", i+1, got)
		}
	}
	if got, err := s.Admit(t.Context(), &queue.Entry{Key: "a", Body: []byte(`{}`)}); err == nil {
		t.Errorf("retry of a (fsynced before) with the AOF off = %v; want an error: this 200 is not backed either", got)
	}
	aof("yes")
	var got queue.Admission
	ok := testkit.Poll(10*time.Second, func() bool {
		got, err = s.Admit(t.Context(), d())
		return err == nil
	})
	if !ok || got != queue.Duplicate {
		t.Errorf("retry of d once the AOF is on again = %v, %v; want Duplicate", got, err)
	}
}
