package processtest

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// relaySite is a Caddyfile site with one bolt-backed relay named "crash"
// forwarding to upstream. The backoff is short so that a restarted relay
// delivers its backlog within the test's deadlines.
func relaySite(upstream *Upstream) string {
	return fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay %s {
		name crash
		store bolt
		key json.id
		backoff 50ms 500ms
	}
}`, upstream.URL("/hook"))
}

// boltFile is where the relay "crash" keeps its store in instance in.
func boltFile(in *Instance) string {
	return filepath.Join(in.DataDir(), "webhook_relay", "crash.db")
}

func payload(i int) string { return fmt.Sprintf(`{"id":"payload-%04d","n":%d}`, i, i) }

// sendAll posts payloads 0..n-1 concurrently and fails unless every one is
// answered 200 accepted.
func sendAll(t *testing.T, in *Instance, n int) {
	t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			status, body := Post(t, in.URL("/hook"), payload(i))
			if status != http.StatusOK || body != `{"status":"accepted"}` {
				t.Errorf("payload %d: %d %s, want 200 accepted", i, status, body)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

// waitDelivered waits until n distinct keys were delivered, then checks none
// was delivered twice.
func waitDelivered(t *testing.T, up *Upstream, n int, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() bool { return len(up.Delivered()) >= n },
		"%s of %d payloads delivered", testkit.Lazy(func() string { return fmt.Sprint(len(up.Delivered())) }), n)
	got := up.Delivered()
	if len(got) != n {
		t.Errorf("%d distinct keys delivered, want %d", len(got), n)
	}
	for k, c := range got {
		if c != 1 {
			t.Errorf("%s delivered %d times", k, c)
		}
	}
}

// A 200 survives kill -9: payloads accepted while the upstream was down are
// all delivered, once each, by the next process; their keys are still seen.
func TestBoltSurvivesKill9(t *testing.T) {
	const n = 200
	in := NewInstance(t)
	up := NewUpstream(t) // down: not started
	p := in.Start(relaySite(up))

	start := time.Now()
	sendAll(t, in, n)
	t.Logf("%d payloads accepted in %s", n, time.Since(start))
	p.Kill()

	up.Start()
	start = time.Now()
	p = in.Start(relaySite(up))
	waitDelivered(t, up, n, 30*time.Second)
	attempts, _ := up.Attempts()
	t.Logf("after kill -9 and restart: %d payloads delivered in %s, %d attempts", n, time.Since(start), attempts)

	for _, i := range []int{0, n / 2, n - 1} {
		if status, body := Post(t, in.URL("/hook"), payload(i)); status != http.StatusOK || body != `{"status":"duplicate"}` {
			t.Errorf("re-sending payload %d: %d %s, want 200 duplicate", i, status, body)
		}
	}
	p.Stop(15 * time.Second)
}

// A graceful stop with deliveries in flight ends within the grace period;
// what was not delivered is delivered after the restart, nothing twice.
func TestBoltGracefulStopInFlight(t *testing.T) {
	const n = 60
	in := NewInstance(t)
	up := NewUpstream(t)
	up.Delay(2 * time.Second)
	up.Start()
	p := in.Start(relaySite(up))

	sendAll(t, in, n)
	testkit.Eventually(t, 10*time.Second, func() bool { _, busy := up.Attempts(); return busy > 0 },
		"no delivery in flight")
	_, busy := up.Attempts()
	took := p.Stop(15 * time.Second)
	done := len(up.Delivered())
	t.Logf("SIGTERM with %d deliveries in flight: exited in %s; %d of %d delivered before the stop", busy, took, done, n)
	// the relay's grace is 5s, the HTTP servers' 2s; allow for process start-up noise
	if limit := 5*time.Second + in.GracePeriod + 2*time.Second; took > limit {
		t.Errorf("graceful stop took %s, want under %s", took, limit)
	}
	if done >= n {
		t.Fatalf("all %d delivered before the stop: the test did not stop with deliveries pending", n)
	}

	up.Delay(0)
	start := time.Now()
	p = in.Start(relaySite(up))
	waitDelivered(t, up, n, 30*time.Second)
	t.Logf("after restart: the remaining %d delivered in %s", n-done, time.Since(start))
	p.Stop(15 * time.Second)
}

// A second Caddy on the same bolt file fails fast, naming the file and
// saying another process holds it; the first keeps working.
func TestBoltSecondProcessFailsFast(t *testing.T) {
	in := NewInstance(t)
	up := NewUpstream(t)
	up.Start()
	first := in.Start(relaySite(up))

	// same data directory, other ports
	second := NewInstance(t)
	second.Home = in.Home
	start := time.Now()
	p := second.Spawn("run", "--config", second.WriteCaddyfile(relaySite(up)), "--adapter", "caddyfile")
	err := p.Wait(20 * time.Second)
	took := time.Since(start)
	log := p.Log()
	t.Logf("second process exited after %s with %v", took, err)
	if !errExit(err) {
		t.Errorf("second process exit = %v, want a failure", err)
	}
	if !strings.Contains(log, boltFile(in)) || !strings.Contains(log, "another process holds") {
		t.Errorf("second process's log does not name %s and say another process holds it:\n%s", boltFile(in), log)
	}
	if took > 10*time.Second {
		t.Errorf("second process took %s to fail", took)
	}

	if status, body := Post(t, in.URL("/hook"), payload(1)); status != http.StatusOK || body != `{"status":"accepted"}` {
		t.Errorf("first process after the second failed: %d %s", status, body)
	}
	waitDelivered(t, up, 1, 10*time.Second)
	first.Stop(15 * time.Second)
}

// `caddy validate` on the running instance's config neither hangs nor
// disturbs the running instance.
func TestBoltValidateNextToRunning(t *testing.T) {
	in := NewInstance(t)
	up := NewUpstream(t)
	up.Start()
	p := in.Start(relaySite(up))
	if status, body := Post(t, in.URL("/hook"), payload(1)); status != http.StatusOK || body != `{"status":"accepted"}` {
		t.Fatalf("before validate: %d %s", status, body)
	}

	start := time.Now()
	v := in.Spawn("validate", "--config", in.WriteCaddyfile(relaySite(up)), "--adapter", "caddyfile")
	err := v.Wait(20 * time.Second)
	took := time.Since(start)
	t.Logf("caddy validate next to a running instance: %s, exit %v; output:\n%s", took, err, v.Tail(3))
	if took > 10*time.Second {
		t.Errorf("caddy validate took %s", took)
	}

	if status, body := Post(t, in.URL("/hook"), payload(2)); status != http.StatusOK || body != `{"status":"accepted"}` {
		t.Errorf("after validate: %d %s", status, body)
	}
	if status, body := Post(t, in.URL("/hook"), payload(1)); status != http.StatusOK || body != `{"status":"duplicate"}` {
		t.Errorf("after validate, re-sending: %d %s, want duplicate", status, body)
	}
	waitDelivered(t, up, 2, 10*time.Second)
	p.Stop(15 * time.Second)
}
