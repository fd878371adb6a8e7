package processtest

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// fanOutSite is a Redis-backed relay delivering every payload to app and
// the even ones (a filter) to archive.
func fanOutSite(app, archive *Upstream, srv *redistest.Server) string {
	return fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay /hook {
		name %s
		key json.id
		backoff 50ms 500ms
		store redis %s {
			dial_timeout       500ms
			read_timeout       500ms
			write_timeout      500ms
			visibility_timeout 20s
		}
		destination app %s
		destination archive %s {
			filter `+"`"+`body.n %% 2 == 0`+"`"+`
		}
	}
}`, redisRelayName, srv.URL(), app.URL("/hook"), archive.URL("/hook"))
}

// A Caddy process killed with kill -9 while it holds a destination's
// deliveries loses nothing of that destination, and delivers nothing twice
// to the other: the app took every payload from A before the kill; the
// archive's attempts hang on A until it dies; B, on the same Redis, takes
// A's archive deliveries over once A's liveness key expired and delivers
// each even payload to the archive; the app gets nothing again.
func TestRedisFanOutInstanceKilled(t *testing.T) {
	const n = 20
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rc := inspector(t, srv)
	app := NewUpstream(t)
	app.Start()
	var hold atomic.Bool
	hold.Store(true)
	archive := &Upstream{}
	archive.Upstream = testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer {
		if hold.Load() {
			return testkit.Answer{Hang: true}
		}
		return testkit.Answer{Status: http.StatusOK}
	})

	a := NewInstance(t)
	pa := a.Start(fanOutSite(app, archive, srv))
	sendAll(t, a, n)
	testkit.Eventually(t, 15*time.Second, func() bool { return len(app.Delivered()) == n && archive.InFlight() > 0 },
		"%s", testkit.Lazy(func() string {
			return fmt.Sprintf("A delivered %d of %d to the app, %d archive attempts open", len(app.Delivered()), n, archive.InFlight())
		}))
	stream := func(lane string) int64 {
		l, err := rc.XLen(t.Context(), "{webhook_relay:"+redisRelayName+"}:q:"+lane).Result()
		if err != nil {
			t.Fatalf("XLEN of %s's stream: %v", lane, err)
		}
		return l
	}
	if got := stream("archive"); got != n/2 {
		t.Fatalf("the archive's lane holds %d deliveries before the kill, want %d (the even payloads)", got, n/2)
	}

	b := NewInstance(t)
	b.Start(fanOutSite(app, archive, srv))
	pa.Kill()
	killed := time.Now()
	hold.Store(false)

	// within the 15 s the README promises: by the liveness key, not the
	// visibility timeout (20 s)
	testkit.Eventually(t, 15*time.Second, func() bool { return len(archive.Delivered()) == n/2 },
		"%s", testkit.Lazy(func() string {
			return fmt.Sprintf("%d of %d even payloads delivered to the archive after the kill", len(archive.Delivered()), n/2)
		}))
	t.Logf("the archive had all %d even payloads %s after A was killed", n/2, time.Since(killed).Round(time.Millisecond))
	for key, times := range archive.Delivered() {
		if times != 1 {
			t.Errorf("archive: %s delivered %d times, want once", key, times)
		}
	}
	for _, r := range archive.Requests() {
		var id, num int
		if _, err := fmt.Sscanf(string(r.Body), `{"id":"payload-%04d","n":%d}`, &id, &num); err != nil || num%2 != 0 {
			t.Errorf("the archive got %s, not an even payload", r.Body)
		}
	}
	for key, times := range app.Delivered() {
		if times != 1 {
			t.Errorf("app: %s delivered %d times, want once (B must not deliver the app's again)", key, times)
		}
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return stream("app") == 0 && stream("archive") == 0 },
		"both lanes' streams empty: app %d, archive %d", testkit.Lazy(func() string { return fmt.Sprint(stream("app")) }),
		testkit.Lazy(func() string { return fmt.Sprint(stream("archive")) }))
}
