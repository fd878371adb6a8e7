package processtest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// Several Caddy processes on one Redis with the same relay name share one
// queue and one dedupe state: every payload sent to all of them at once is
// accepted by exactly one and answered duplicate by the others, and each
// accepted payload reaches the upstream exactly once.
func TestRedisInstancesShareOneQueue(t *testing.T) {
	const n, instances = 300, 3
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rc := inspector(t, srv)
	up := NewUpstream(t)
	up.Start()

	ins := make([]*Instance, instances)
	for i := range ins {
		ins[i] = NewInstance(t)
		ins[i].Start(redisSite(up, srv))
	}

	// every payload to every instance, in random order, many at once
	type send struct{ payload, instance int }
	sends := make([]send, 0, n*instances)
	for p := range n {
		for i := range instances {
			sends = append(sends, send{p, i})
		}
	}
	rand.Shuffle(len(sends), func(a, b int) { sends[a], sends[b] = sends[b], sends[a] })

	var mu sync.Mutex
	accepted := make([]int, n)
	duplicates := make([]int, n)
	acceptedBy := make([]int, instances)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	start := time.Now()
	for _, s := range sends {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r := postResp(ins[s.instance].URL("/hook"), payload(s.payload))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case r.accepted():
				accepted[s.payload]++
				acceptedBy[s.instance]++
			case r.duplicate():
				duplicates[s.payload]++
			default:
				t.Errorf("payload %d to instance %d: %s, want 200 accepted or duplicate", s.payload, s.instance, r)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	totalAcc, totalDup := 0, 0
	for p := range n {
		totalAcc += accepted[p]
		totalDup += duplicates[p]
		if accepted[p] != 1 || duplicates[p] != instances-1 {
			t.Errorf("payload %d: accepted %d times, duplicate %d times; want 1 and %d", p, accepted[p], duplicates[p], instances-1)
		}
	}
	t.Logf("%d requests (%d payloads x %d instances) in %s: %d accepted (by instance: %v), %d duplicate",
		len(sends), n, instances, took, totalAcc, acceptedBy, totalDup)
	if t.Failed() {
		t.FailNow()
	}

	start = time.Now()
	waitDelivered(t, up, n, 30*time.Second)
	attempts, _ := up.Attempts()
	t.Logf("%d payloads delivered in %s after the last answer, %d upstream attempts", len(up.Delivered()), time.Since(start), attempts)

	// the queue empties: every delivered entry was acknowledged and removed
	waitQueueEmpty(t, rc, 10*time.Second)

	var byInstance []int64
	for _, in := range ins {
		_, del, err := relayOverview(in)
		if err != nil {
			t.Fatalf("admin overview: %v", err)
		}
		byInstance = append(byInstance, del["success"])
	}
	t.Logf("successful deliveries by instance (admin API): %v", byInstance)
}

// A Caddy process killed with kill -9 while the upstream refuses its
// backlog loses nothing: another process on the same Redis and relay name
// delivers all of it, once each, within the 15s the README promises. A
// failed attempt gives its entry back to the store ({p}:due) until it is
// due, so at the kill A holds only what it claimed to attempt (payload 0,
// whose attempt the upstream leaves unanswered, and whatever else it had
// just claimed) and the rest waits in the due set: B takes those when they
// are due, without waiting for anything of A's, and takes what A held over
// only once A's liveness key has expired (5s), long before the visibility
// timeout (20s).
func TestRedisInstanceKilledWithBacklog(t *testing.T) {
	const n = 30
	held := []byte(`"id":"payload-0000"`) // its attempt hangs on A until A is killed
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rc := inspector(t, srv)
	due := "{webhook_relay:" + redisRelayName + "}:due:upstream" // its destination's lane
	var hold atomic.Bool
	hold.Store(true)
	up := &Upstream{}
	up.status.Store(http.StatusServiceUnavailable)
	up.Upstream = testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		if hold.Load() && bytes.Contains(r.Body, held) {
			return testkit.Answer{Hang: true}
		}
		return testkit.Answer{Status: int(up.status.Load())}
	})

	a := NewInstance(t)
	pa := a.Start(redisSite(up, srv))
	sendAll(t, a, n)

	// A attempted every entry; each is pending on A (being attempted) or
	// waits in the due set; payload 0's attempt is open
	attempted := func() int {
		keys := map[string]bool{}
		for _, r := range up.Requests() {
			keys[r.Key] = true
		}
		return len(keys)
	}
	var q queueState
	var waiting int64
	testkit.Eventually(t, 15*time.Second, func() bool {
		var err error
		if q, err = readQueue(rc); err != nil {
			return false
		}
		waiting, err = rc.ZCard(t.Context(), due).Result()
		return err == nil && attempted() == n && up.InFlight() >= 1 &&
			q.Len == n && q.Pending+waiting == n && len(q.ByOwner) == 1
	}, "%s", testkit.Lazy(func() string {
		return fmt.Sprintf("A did not attempt all %d entries with payload 0 open: %d attempted, %d open; %s, %d in the due set",
			n, attempted(), up.InFlight(), q, waiting)
	}))
	var consumerA string
	for c := range q.ByOwner {
		consumerA = c
	}
	t.Logf("A accepted and attempted all %d: %s, %d in the due set", n, q, waiting)

	b := NewInstance(t)
	pb := b.Start(redisSite(up, srv))

	pa.Kill()
	killed := time.Now()
	// what the killed A holds: its pending list stays as it was until B
	// takes it over
	pend, err := rc.XPendingExt(t.Context(), &redis.XPendingExtArgs{Stream: redisStream, Group: "relay",
		Start: "-", End: "+", Count: n, Consumer: consumerA}).Result()
	if err != nil {
		t.Fatalf("A's pending list: %v", err)
	}
	heldByA := map[string]bool{}
	for _, p := range pend {
		msgs, err := rc.XRange(t.Context(), redisStream, p.ID, p.ID).Result()
		if err != nil || len(msgs) != 1 {
			t.Fatalf("stream entry %s pending on A: %v %v", p.ID, msgs, err)
		}
		k, _ := msgs[0].Values["k"].(string)
		heldByA[k] = true
	}
	heldKey := ""
	for _, r := range up.Requests() {
		if bytes.Contains(r.Body, held) {
			heldKey = r.Key
		}
	}
	if !heldByA[heldKey] {
		t.Fatalf("A's pending list at the kill %v does not hold payload 0 (key %q), whose attempt was open", heldByA, heldKey)
	}
	hold.Store(false)
	up.Answer(http.StatusOK)
	if got := len(up.Delivered()); got != 0 {
		t.Fatalf("%d payloads delivered while the upstream answered 503", got)
	}

	// A's liveness key: the last moment it was seen, and when it was gone
	var lastAlive, gone time.Time
	aliveKey := "{webhook_relay:" + redisRelayName + "}:alive:" + consumerA
	testkit.Eventually(t, 15*time.Second, func() bool {
		at := time.Now()
		n, err := rc.Exists(t.Context(), aliveKey).Result()
		if err != nil {
			return false
		}
		if n == 1 {
			lastAlive = at
			return false
		}
		gone = time.Now()
		return true
	}, "A's liveness key %s did not expire", aliveKey)
	if lastAlive.IsZero() {
		t.Fatalf("A's liveness key %s was gone at once after the kill; it lives 5s", aliveKey)
	}

	testkit.Eventually(t, 15*time.Second-time.Since(killed), func() bool { return len(up.Delivered()) >= n },
		"%s", testkit.Lazy(func() string {
			return fmt.Sprintf("B delivered %d of %d payloads of the killed A within 15s of the kill; queue: %s",
				len(up.Delivered()), n, queueString(rc))
		}))
	all := time.Since(killed)
	waitDelivered(t, up, n, time.Second)
	var heldAt, dueFirst, dueLast time.Duration
	dueBefore := 0
	for _, r := range up.Requests() {
		if r.Status/100 != 2 {
			continue
		}
		at := r.At.Sub(killed)
		if heldByA[r.Key] {
			heldAt = max(heldAt, at)
			// taken over only once A's key expired
			if !r.At.After(lastAlive) {
				t.Errorf("%s, held by A at the kill, delivered %s after the kill, while A's liveness key still lived (seen %s after the kill)",
					r.Key, at.Round(time.Millisecond), lastAlive.Sub(killed).Round(time.Millisecond))
			}
			continue
		}
		if dueFirst == 0 || at < dueFirst {
			dueFirst = at
		}
		dueLast = max(dueLast, at)
		if r.At.Before(lastAlive) {
			dueBefore++
		}
	}
	t.Logf("after kill -9 of A (%d held by A, %d waiting in the due set): A's liveness key gone %s after the kill (last seen %s); "+
		"the waiting ones delivered by B %s to %s after the kill (%d before A's key expired); the held ones %s after; all %d by %s "+
		"(liveness TTL 5s, visibility_timeout 20s)",
		len(heldByA), n-len(heldByA), gone.Sub(killed).Round(time.Millisecond), lastAlive.Sub(killed).Round(time.Millisecond),
		dueFirst.Round(time.Millisecond), dueLast.Round(time.Millisecond), dueBefore, heldAt.Round(time.Millisecond),
		n, all.Round(time.Millisecond))
	if n > len(heldByA) && dueBefore == 0 {
		t.Errorf("none of the %d entries waiting in the due set was delivered before A's liveness key expired; B takes them when due", n-len(heldByA))
	}

	waitQueueEmpty(t, rc, 10*time.Second)
	// the killed A's consumer left the group once it held nothing
	testkit.Eventually(t, 10*time.Second, func() bool {
		cs, err := rc.XInfoConsumers(t.Context(), redisStream, "relay").Result()
		return err == nil && len(cs) == 1
	}, "%s", testkit.Lazy(func() string {
		cs, err := rc.XInfoConsumers(t.Context(), redisStream, "relay").Result()
		return fmt.Sprintf("consumers %v (%v): want only B's", cs, err)
	}))
	for _, i := range []int{0, n - 1} {
		if r := postResp(b.URL("/hook"), payload(i)); !r.duplicate() {
			t.Errorf("re-sending payload %d to B: %s, want 200 duplicate", i, r)
		}
	}
	pb.Stop(15 * time.Second)
}

// A dead Redis turns every request into a quick 503 with Retry-After, never
// a 200; when Redis is back (same port, AOF) the same Caddy process accepts
// again, and what it had queued before Redis died is delivered.
func TestRedisDownAnswers503(t *testing.T) {
	const n = 20
	srv := redistest.Start(t, redistest.Options{AOF: true})
	up := NewUpstream(t)
	up.Answer(http.StatusServiceUnavailable)
	up.Start()
	in := NewInstance(t)
	p := in.Start(redisSite(up, srv))
	sendAll(t, in, n) // payloads 0..n-1, queued; the upstream refuses them

	srv.Kill()
	killed := time.Now()

	// new payloads and a re-send of a queued one, some at once
	ids := []int{1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 0}
	var wg sync.WaitGroup
	resps := make([]response, len(ids))
	for round := range 2 { // the second round meets a pool with no live connection left
		for j, id := range ids {
			wg.Go(func() { resps[j] = postResp(in.URL("/hook"), payload(id)) })
		}
		wg.Wait()
		var slowest time.Duration
		for j, r := range resps {
			slowest = max(slowest, r.Took)
			if r.Status != http.StatusServiceUnavailable || r.RetryAfter == "" {
				t.Errorf("round %d, payload %d with Redis down: %s, want 503 with Retry-After", round, ids[j], r)
			}
			// refused dials fail at once; go-redis retries the dial 5 times
			// 100ms apart, the command once (with a backoff of up to
			// 512ms), and concurrent admits queue behind the batching
			// pipeliners: about 1-1.7s seen, 3s allowed
			if r.Took > 3*time.Second {
				t.Errorf("round %d, payload %d with Redis down took %s; the redis timeouts are 500ms", round, ids[j], r.Took)
			}
		}
		t.Logf("Redis down, round %d: %d requests answered %d, Retry-After %q, slowest %s",
			round, len(ids), resps[0].Status, resps[0].RetryAfter, slowest.Round(time.Millisecond))
	}
	if t.Failed() {
		t.FailNow()
	}

	srv.Restart()
	restarted := time.Now()
	t.Logf("Redis down for %s, restarted", restarted.Sub(killed).Round(time.Millisecond))

	var last response
	tries := 0
	testkit.Eventually(t, 10*time.Second, func() bool {
		tries++
		last = postResp(in.URL("/hook"), payload(1000))
		return last.Status == http.StatusOK
	}, "%s", testkit.Lazy(func() string { return fmt.Sprintf("no 200 after Redis came back; last answer %s", last) }))
	t.Logf("first 200 %s after the restart, after %d tries: %s", time.Since(restarted).Round(time.Millisecond), tries, last)
	if !last.accepted() {
		t.Errorf("payload 1000 after Redis came back: %s, want accepted (every earlier try was refused, so nothing stored it)", last)
	}
	for _, id := range ids[1 : len(ids)-1] {
		if r := postResp(in.URL("/hook"), payload(id)); !r.accepted() {
			t.Errorf("payload %d, refused while Redis was down, re-sent: %s, want 200 accepted", id, r)
		}
	}
	if r := postResp(in.URL("/hook"), payload(0)); !r.duplicate() {
		t.Errorf("payload 0, queued before Redis died, re-sent: %s, want 200 duplicate", r)
	}

	up.Answer(http.StatusOK)
	start := time.Now()
	want := n + len(ids) - 1
	waitDelivered(t, up, want, 30*time.Second)
	t.Logf("upstream up: all %d (%d queued before the Redis kill, %d after the restart) delivered once each in %s",
		want, n, len(ids)-1, time.Since(start).Round(time.Millisecond))
	p.Stop(15 * time.Second)
}

// A Redis restart (kill -9, AOF always) keeps the queue and the dedupe
// markers: what was accepted while the upstream was down is delivered once
// the upstream is up, and a re-send is a duplicate.
func TestRedisRestartKeepsQueue(t *testing.T) {
	const n = 100 // more than the 64 one process claims: some claimed, some not yet read
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rc := inspector(t, srv)
	up := NewUpstream(t)
	up.Answer(http.StatusServiceUnavailable)
	up.Start()
	in := NewInstance(t)
	p := in.Start(redisSite(up, srv))
	sendAll(t, in, n)
	testkit.Eventually(t, 15*time.Second, func() bool {
		q, err := readQueue(rc)
		return err == nil && q.Len == n && q.Pending > 0
	}, "%s", testkit.Lazy(func() string { return fmt.Sprintf("relay did not claim any of the %d entries: %s", n, queueString(rc)) }))
	before := mustQueue(t, rc)

	srv.Kill()
	srv.Restart()
	after := mustQueue(t, rc)
	t.Logf("before the Redis kill: %v; after the restart: %v", before, after)
	if after.Len != n {
		t.Errorf("after the Redis restart the stream holds %d entries, want %d", after.Len, n)
	}

	up.Answer(http.StatusOK)
	start := time.Now()
	waitDelivered(t, up, n, 30*time.Second)
	t.Logf("after the Redis restart: all %d delivered once each in %s", n, time.Since(start).Round(time.Millisecond))
	waitQueueEmpty(t, rc, 10*time.Second)

	for _, i := range []int{0, n - 1} {
		if r := postResp(in.URL("/hook"), payload(i)); !r.duplicate() {
			t.Errorf("re-sending payload %d after the Redis restart: %s, want 200 duplicate", i, r)
		}
	}
	p.Stop(15 * time.Second)
}

// A hung Redis (the process stopped: connections are accepted by the
// kernel, nothing answers) turns requests into 503 with Retry-After within
// a small multiple of the 500ms redis timeouts, never 200 and never a hang.
// When it resumes, what it had buffered may have been stored, so a re-send
// is accepted or duplicate; every payload is delivered once.
func TestRedisHungAnswers503(t *testing.T) {
	// one try and one retry at 500ms each, the retry backoff, and the
	// queueing of concurrent admits behind the batching pipeliners
	hungRedis(t, redisSite, 4*time.Second, true)
}

// With the default redis timeouts (2s) a hung Redis must still be answered
// within queue.AdmitTimeout (10s: "past it the sender gets a 503"),
// since senders commonly give up after 10s.
func TestRedisHungDefaultTimeoutsWithinAdmitTimeout(t *testing.T) {
	defaults := func(up *Upstream, srv *redistest.Server) string {
		return strings.NewReplacer("dial_timeout       500ms\n", "", "read_timeout       500ms\n", "",
			"write_timeout      500ms\n", "").Replace(redisSite(up, srv))
	}
	hungRedis(t, defaults, 10*time.Second+500*time.Millisecond, false)
}

// hungRedis stops the relay's Redis with SIGSTOP, sends 40 new payloads at
// once and checks each is answered 503 with Retry-After within bound; then
// resumes Redis and re-sends them, and with deliveries waits until every
// payload was delivered once.
func hungRedis(t *testing.T, site func(*Upstream, *redistest.Server) string, bound time.Duration, deliveries bool) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	up := NewUpstream(t)
	up.Start()
	in := NewInstance(t)
	p := in.Start(site(up, srv))
	sendAll(t, in, 5)
	waitDelivered(t, up, 5, 10*time.Second)

	pid := srv.Pid()
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

	const m = 40
	resps := make([]response, m)
	var wg sync.WaitGroup
	start := time.Now()
	for j := range m {
		wg.Go(func() { resps[j] = postResp(in.URL("/hook"), payload(2000+j)) })
	}
	wg.Wait()
	all := time.Since(start)
	var slowest, fastest time.Duration = 0, time.Hour
	late := 0
	for j, r := range resps {
		slowest, fastest = max(slowest, r.Took), min(fastest, r.Took)
		if r.Status != http.StatusServiceUnavailable || r.RetryAfter == "" {
			t.Errorf("payload %d with Redis hung: %s, want 503 with Retry-After", 2000+j, r)
		}
		if r.Took > bound {
			late++
		}
	}
	t.Logf("Redis hung: %d concurrent requests answered in %s (fastest %s, slowest %s)",
		m, all.Round(time.Millisecond), fastest.Round(time.Millisecond), slowest.Round(time.Millisecond))
	if late > 0 {
		t.Errorf("with Redis hung, %d of %d requests took longer than %s (slowest %s)", late, m, bound, slowest.Round(time.Millisecond))
	}

	resume()
	acc, dup := 0, 0
	testkit.Eventually(t, 10*time.Second, func() bool {
		return postResp(in.URL("/hook"), payload(5)).Status == http.StatusOK
	}, "no 200 after Redis resumed")
	for j := range m {
		switch r := postResp(in.URL("/hook"), payload(2000+j)); {
		case r.accepted():
			acc++
		case r.duplicate():
			dup++
		default:
			t.Errorf("payload %d re-sent after Redis resumed: %s", 2000+j, r)
		}
	}
	t.Logf("after Redis resumed: of the %d refused payloads, re-sent, %d accepted and %d duplicate (stored from Redis's buffers although answered 503)", m, acc, dup)
	if deliveries {
		start = time.Now()
		waitDelivered(t, up, 5+1+m, 40*time.Second)
		t.Logf("all %d delivered once each, %s after Redis resumed", 5+1+m, time.Since(start).Round(time.Millisecond))
	}
	p.Stop(15 * time.Second)
}
