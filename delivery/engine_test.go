package delivery

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/redis"
)

func settingsFor(t *testing.T, rawURL string) *Settings {
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return &Settings{
		Upstream:    u,
		Timeout:     2 * time.Second,
		Concurrency: 4,
		Backoff:     Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond},
		GiveUpAfter: time.Hour,
		HeaderUp:    http.Header{"X-Extra": {"yes"}},
	}
}

func startEngine(t *testing.T, store queue.Store, s *Settings) *Engine {
	e := Start(Config{Store: store, Settings: s, PollInterval: 20 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })
	return e
}

func admit(t *testing.T, store queue.Store, key string, body string) *queue.Entry {
	t.Helper()
	e := &queue.Entry{
		Key:  key,
		Body: []byte(body),
		Request: queue.RequestMeta{
			RawQuery: "a=1&b=%20x", ContentType: "application/json",
			UserAgent: "sender/1.0", ForwardedFor: "10.0.0.1, 127.0.0.1",
		},
	}
	if a, err := store.Admit(context.Background(), e); err != nil || a != queue.Accepted {
		t.Fatalf("admit %s: %v %v", key, a, err)
	}
	return e
}

func waitStats(t *testing.T, store queue.Store, ok func(queue.Stats) bool) queue.Stats {
	t.Helper()
	var st queue.Stats
	testkit.Eventually(t, 10*time.Second, func() bool {
		var err error
		if st, err = store.Stats(context.Background()); err != nil {
			t.Fatal(err)
		}
		return ok(st)
	}, "store never reached the wanted state; last: %+v", testkit.Lazy(func() string { return fmt.Sprintf("%+v", st) }))
	return st
}

func TestForwardedRequestShape(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(200))
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL+"/hook?fixed=1")
	startEngine(t, store, s)
	admit(t, store, "rw:task/img", `{"taskUUID":"t"}`)

	got := up.Next(t)
	if string(got.Body) != `{"taskUUID":"t"}` {
		t.Errorf("body %q", got.Body)
	}
	if got.RawQuery != "fixed=1&a=1&b=%20x" {
		t.Errorf("query %q, want the upstream's own then the incoming one", got.RawQuery)
	}
	for field, want := range map[string]string{
		"Content-Type":    "application/json",
		"User-Agent":      "sender/1.0",
		"X-Forwarded-For": "10.0.0.1, 127.0.0.1",
		"Idempotency-Key": "rw:task/img",
		AttemptHeader:     "1",
		"X-Extra":         "yes",
	} {
		if v := got.Header.Get(field); v != want {
			t.Errorf("%s: %q, want %q", field, v, want)
		}
	}
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
}

func TestRetriesUntilSuccess(t *testing.T) {
	answers := []int{503, 500, 429, 408, 200}
	n := 0
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { n++; return testkit.Answer{Status: answers[n-1]} })
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	startEngine(t, store, settingsFor(t, up.URL))
	admit(t, store, "k", `{}`)

	for i, want := range answers {
		got := up.Next(t)
		if a := got.Header.Get(AttemptHeader); a != fmt.Sprint(i+1) {
			t.Errorf("attempt header %q, want %d", a, i+1)
		}
		if got.Header.Get("Idempotency-Key") != "k" {
			t.Errorf("attempt %d: Idempotency-Key %q", i+1, got.Header.Get("Idempotency-Key"))
		}
		if got.Status != want {
			t.Fatalf("script out of step: %d", got.Status)
		}
	}
	st := waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	if st.Dead != 0 {
		t.Errorf("dead letters: %d", st.Dead)
	}
}

func TestPermanentFailureIsDeadAtOnce(t *testing.T) {
	up := testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		if string(r.Body) == `"bad"` {
			return testkit.Answer{Status: 422}
		}
		return testkit.Answer{}
	})
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	startEngine(t, store, settingsFor(t, up.URL))
	bad := admit(t, store, "bad", `"bad"`)

	waitStats(t, store, func(st queue.Stats) bool { return st.Dead == 1 && st.Backlog == 0 })
	dead, err := store.DeadEntry(context.Background(), bad.ID)
	if err != nil {
		t.Fatal(err)
	}
	if dead.Attempts != 1 || dead.LastStatus != 422 || dead.LastError == "" {
		t.Errorf("dead letter: attempts %d, status %d, reason %q", dead.Attempts, dead.LastStatus, dead.LastError)
	}
	// A later payload goes through and the 422 one is not tried again.
	admit(t, store, "good", `"good"`)
	for got := up.Next(t); string(got.Body) != `"good"`; got = up.Next(t) {
		if string(got.Body) == `"bad"` && got.Header.Get(AttemptHeader) != "1" {
			t.Fatal("a dead-lettered payload was retried")
		}
	}
}

func TestGivesUpAfterDeadline(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(503))
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL)
	s.GiveUpAfter = 30 * time.Millisecond
	startEngine(t, store, s)
	e := admit(t, store, "k", `{}`)

	waitStats(t, store, func(st queue.Stats) bool { return st.Dead == 1 })
	dead, err := store.DeadEntry(context.Background(), e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if dead.LastStatus != 503 || dead.Attempts < 2 {
		t.Errorf("dead letter: attempts %d, status %d, reason %q", dead.Attempts, dead.LastStatus, dead.LastError)
	}
}

func TestOneFailingPayloadDoesNotBlockOthers(t *testing.T) {
	up := testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		if string(r.Body) == `"stuck"` {
			return testkit.Answer{Status: 503}
		}
		return testkit.Answer{}
	})
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL)
	s.Concurrency = 1
	startEngine(t, store, s)
	admit(t, store, "stuck", `"stuck"`)
	for i := range 20 {
		admit(t, store, fmt.Sprint("ok", i), fmt.Sprintf(`"ok%d"`, i))
	}
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 1 })
}

func TestTimeoutIsRetried(t *testing.T) {
	up := testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		return testkit.Answer{Hang: r.Nth == 1}
	})
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL)
	s.Timeout = 50 * time.Millisecond
	startEngine(t, store, s)
	admit(t, store, "k", `{}`)
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 && st.Dead == 0 })
}

func TestSettingsSwapSendsBacklogToNewUpstream(t *testing.T) {
	down := testkit.NewUpstream(t, testkit.Always(503))
	up := testkit.NewUpstream(t, testkit.Always(200))
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	e := startEngine(t, store, settingsFor(t, down.URL))
	for i := range 10 {
		admit(t, store, fmt.Sprint(i), "{}")
	}
	down.Next(t)
	e.SetSettings(settingsFor(t, up.URL))
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
}

// Stop gives back what the engine holds: the entry waiting for a place is
// claimable at once; the one whose attempt Stop cut short waits in the
// store for its backoff, with its attempt recorded.
func TestStopReleasesHeldEntries(t *testing.T) {
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { return testkit.Answer{Hang: true} })
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL)
	s.Concurrency = 1
	s.Backoff = Backoff{Initial: time.Hour, Max: time.Hour}
	e := Start(Config{Store: store, Settings: s})
	first := admit(t, store, "k1", "{}")
	second := admit(t, store, "k2", "{}")
	up.Next(t)
	e.Stop(10 * time.Millisecond)

	got, err := store.Claim(context.Background(), 10)
	if err != nil || len(got) != 1 || got[0].ID != second.ID || got[0].Attempts != 0 {
		t.Fatalf("after Stop: claimed %v (err %v), want only %s, never attempted", got, err, second.ID)
	}
	next, err := store.NextDue(context.Background())
	if err != nil || time.Until(next) < 30*time.Minute {
		t.Fatalf("after Stop: next retry due %v (err %v), want %s's, about an hour away", next, err, first.ID)
	}
}

func TestRetryAfterNeverPastGiveUp(t *testing.T) {
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer {
		return testkit.Answer{Status: http.StatusServiceUnavailable, Header: http.Header{"Retry-After": {"31536000"}}} // a year
	})
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL)
	s.GiveUpAfter = 100 * time.Millisecond
	startEngine(t, store, s)
	admit(t, store, "k", "{}")
	waitStats(t, store, func(st queue.Stats) bool { return st.Dead == 1 && st.Backlog == 0 })
}

func TestFailingPayloadsDoNotStopClaims(t *testing.T) {
	up := testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		if strings.Contains(string(r.Body), "bad") {
			return testkit.Answer{Status: http.StatusInternalServerError}
		}
		return testkit.Answer{}
	})
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL)
	s.Concurrency = 1 // keeps 4 ready: exactly the failing ones
	s.Backoff = Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	startEngine(t, store, s)
	for i := range 4 {
		admit(t, store, fmt.Sprint("bad", i), fmt.Sprintf(`{"bad":%d}`, i))
	}
	admit(t, store, "good", `{"good":true}`)
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 4 })
}

// TestRedisClaimLapseDoesNotDoubleDeliver: when a held entry's claim lapses
// (here an attempt outlasts the visibility timeout; in production, Redis
// unreachable for longer than it) Redis hands the entry out again to the
// same consumer. The engine must not hold it twice: the upstream would get
// it twice, and the second copy would find it buried.
func TestRedisClaimLapseDoesNotDoubleDeliver(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	store, err := redis.New(context.Background(), goredis.NewClient(&goredis.Options{Addr: srv.Addr()}),
		redis.Config{Prefix: "lapse", Consumer: "c1", VisibilityTimeout: 100 * time.Millisecond},
		queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	var slowHits atomic.Int64
	up := testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		if strings.Contains(string(r.Body), "slow") {
			slowHits.Add(1)
			// past the visibility timeout; a dead letter at once
			return testkit.Answer{Status: http.StatusBadRequest, Delay: 400 * time.Millisecond}
		}
		return testkit.Answer{}
	})
	e := Start(Config{Store: store, Settings: settingsFor(t, up.URL), PollInterval: 20 * time.Millisecond, LeaseRefresh: time.Hour})
	t.Cleanup(func() { e.Stop(time.Second) })
	admit(t, store, "slow", `"slow"`)
	waitStats(t, store, func(st queue.Stats) bool { return st.Dead == 1 && st.Backlog == 0 })

	// A later payload goes through after many polls; the slow one was sent once.
	admit(t, store, "later", `"later"`)
	for got := up.Next(t); string(got.Body) != `"later"`; got = up.Next(t) {
	}
	if n := slowHits.Load(); n != 1 {
		t.Fatalf("the payload was sent %d times; want once", n)
	}
}

// Failed payloads wait in the store, not in the engine: however many fail
// (here 200 with an hour's backoff, past the 16 x 4 x concurrency the
// engine used to hold), a healthy one behind them is delivered, and none
// of them is tried again before it is due.
func TestManyFailingPayloadsDoNotHoldUpTheOthers(t *testing.T) {
	up := testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		if strings.Contains(string(r.Body), "bad") {
			return testkit.Answer{Status: http.StatusInternalServerError}
		}
		return testkit.Answer{}
	})
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL)
	s.Concurrency = 1
	s.Backoff = Backoff{Initial: time.Hour, Max: time.Hour}
	const bad = 200
	for i := range bad {
		admit(t, store, fmt.Sprint("bad", i), fmt.Sprintf(`{"bad":%d}`, i))
	}
	good := admit(t, store, "good", `{"good":true}`)
	e := startEngine(t, store, s)

	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == bad })
	reqs := up.Requests()
	if last := reqs[len(reqs)-1]; last.Status != http.StatusOK || !strings.Contains(string(last.Body), "good") {
		t.Errorf("last request %v, want %s delivered after the failing ones", last, good.ID)
	}
	if len(reqs) != bad+1 {
		t.Errorf("the upstream got %d requests, want %d: each failing payload once (its retry is an hour away), the healthy one once", len(reqs), bad+1)
	}
	if next, err := store.NextDue(t.Context()); err != nil || time.Until(next) < 30*time.Minute {
		t.Errorf("next retry due %v (err %v), want about an hour away", next, err)
	}
	if n := e.InFlight(); n != 0 {
		t.Errorf("%d attempts in flight", n)
	}
}
