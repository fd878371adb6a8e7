package processtest

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// The retry-wait test: an app that answers 500 to one kind of payload must
// not stop the others. Retries wait in the store, so 5,000 failing payloads
// are not held by the engine and healthy ones behind them go through at
// once, while the failing ones keep their schedule and become dead letters
// at give_up_after.
const (
	retryBad       = 5000
	retryGood      = 50
	retryGiveUp    = 8 * time.Second
	retryGoodBound = 5 * time.Second // the healthy ones, all delivered within it
)

// retrySite is the relay "retry": bolt or a Redis store, a short backoff
// and give_up_after so the failing payloads die within the test.
func retrySite(upURL, store string) string {
	return fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay %s {
		name retry
		key json.id
		backoff 1s 2s
		give_up_after %s
		%s
	}
}`, upURL, retryGiveUp, store)
}

// retryPost posts the payloads n (numbered from..from+count-1) of kind,
// 32 at a time, and fails unless each is accepted.
func retryPost(t *testing.T, in *Instance, kind string, from, count int) {
	t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	var mu sync.Mutex
	var bad []string
	for i := from; i < from+count; i++ {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r := postResp(in.URL("/hook"), fmt.Sprintf(`{"id":"%s-%05d","kind":%q}`, kind, i, kind))
			if !r.accepted() {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("%s %d: %s", kind, i, r))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d of %d payloads not accepted, e.g. %s", len(bad), count, bad[0])
	}
}

func runRetryWait(t *testing.T, store string) {
	up := testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		if strings.Contains(string(r.Body), `"kind":"bad"`) {
			return testkit.Answer{Status: http.StatusInternalServerError}
		}
		return testkit.Answer{Status: http.StatusOK}
	})
	in := NewInstance(t)
	in.Start(retrySite(up.URL+"/hook", store))

	start := time.Now()
	retryPost(t, in, "bad", 0, retryBad)
	badSent := time.Since(start)
	// every failing payload was attempted and is waiting out its backoff
	// (the old engine held up to 1,024 of them and claimed nothing more)
	goodFrom := time.Now()
	retryPost(t, in, "good", 0, retryGood)
	good := func() int {
		n := 0
		for _, r := range up.Requests() {
			if r.Status == http.StatusOK {
				n++
			}
		}
		return n
	}
	testkit.Eventually(t, retryGoodBound+time.Since(goodFrom), func() bool { return good() >= retryGood },
		"%s of %d healthy payloads delivered within %s of their sending, behind %d failing ones",
		testkit.Lazy(func() string { return fmt.Sprint(good()) }), retryGood, retryGoodBound, retryBad)
	goodTook := time.Since(goodFrom)
	t.Logf("%s: %d failing payloads sent in %s; %d healthy ones delivered %s after their sending began",
		store, retryBad, badSent.Round(time.Millisecond), retryGood, goodTook.Round(time.Millisecond))

	// the failing ones die at give_up_after, not before, and not much after
	var ov relayOverviewEntry
	testkit.Eventually(t, retryGiveUp+badSent+30*time.Second, func() bool {
		var err error
		ov, err = faultOverview(in, "retry")
		return err == nil && ov.DeadLetters == retryBad && ov.Backlog == 0
	}, "dead letters and backlog never reached %d and 0: last %+v", retryBad, testkit.Lazy(func() string { return fmt.Sprintf("%+v", ov) }))
	allDead := time.Since(start)

	// each failing payload was retried on its schedule: attempts spread
	// from its first to give_up_after (backoff 1s, 2s, 2s...: 5 or so)
	first, last, n := map[string]time.Time{}, map[string]time.Time{}, map[string]int{}
	for _, r := range up.Requests() {
		if r.Status != http.StatusInternalServerError {
			continue
		}
		if _, ok := first[r.Key]; !ok {
			first[r.Key] = r.At
		}
		last[r.Key], n[r.Key] = r.At, n[r.Key]+1
	}
	if len(n) != retryBad {
		t.Fatalf("%d failing payloads reached the upstream, want %d", len(n), retryBad)
	}
	var counts []int
	var spans []time.Duration
	for k := range n {
		counts = append(counts, n[k])
		spans = append(spans, last[k].Sub(first[k]))
	}
	slices.Sort(counts)
	slices.Sort(spans)
	t.Logf("%s: all %d dead %s after the first was sent; attempts per failing payload min %d median %d max %d; "+
		"first to last attempt min %s median %s max %s",
		store, retryBad, allDead.Round(time.Millisecond), counts[0], counts[len(counts)/2], counts[len(counts)-1],
		spans[0].Round(time.Millisecond), spans[len(spans)/2].Round(time.Millisecond), spans[len(spans)-1].Round(time.Millisecond))
	if counts[0] < 3 {
		t.Errorf("a failing payload was attempted %d times before give_up_after %s; want 3 or more (backoff 1s 2s)", counts[0], retryGiveUp)
	}
	// the last attempt is at give_up_after from the first (the payload
	// was queued just before it); none much before
	if min := spans[0]; min < retryGiveUp-3*time.Second {
		t.Errorf("a failing payload was given up %s after its first attempt; want about give_up_after (%s)", min, retryGiveUp)
	}
}

// TestRetriesWaitInTheStoreBolt: see runRetryWait.
func TestRetriesWaitInTheStoreBolt(t *testing.T) {
	runRetryWait(t, "store bolt")
}

// TestRetriesWaitInTheStoreRedis: see runRetryWait.
func TestRetriesWaitInTheStoreRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	runRetryWait(t, fmt.Sprintf("store redis %s", srv.URL()))
}
