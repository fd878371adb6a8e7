package processtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/ops"
)

// The retry-wait test: an app that answers 500 to one kind of payload must
// not stop the others. Retries wait in the store, so 5,000 failing payloads
// are not held by the engine and healthy ones behind them go through within
// seconds, while the failing ones keep their schedule and become dead
// letters at give_up_after.
//
// The schedule asks about three attempts of each failing payload (at 0, 8s
// and give_up_after), some 15,000 attempts over 25 s: well within what two
// loaded cores deliver, so the test measures the relay's order and not a
// machine pushed past its capacity (backoff 1s 2s and give_up_after 8s
// asked ~3,000 attempts a second, more than a loaded CI machine does, and
// then the healthy payloads rightly wait behind the overdue retries). The
// bounds are generous and the timings are logged; the engine before
// retries waited in the store held 1,024 failing payloads until they died
// and claimed nothing more, so the healthy ones waited until the failing
// ones were dead (give_up_after after they were queued, all 5,000 within
// a round: seen 11.6-12.6 s with give_up_after 12s), past retryGoodBound,
// half of give_up_after.
const (
	retryBad       = 5000
	retryGood      = 50
	retryBackoff   = "8s 16s"
	retryBackoffMx = 16 * time.Second
	retryGiveUp    = 24 * time.Second
	retryGoodBound = 12 * time.Second // the healthy ones, all delivered within it of their sending
	retryDiedSlack = 15 * time.Second // past give_up_after + the backoff's max, on a loaded machine
)

// retrySite is the relay "retry": bolt or a Redis store, a short backoff
// and give_up_after so the failing payloads die within the test.
func retrySite(upURL, store string) string {
	return fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay %s {
		name retry
		key json.id
		backoff %s
		give_up_after %s
		%s
	}
}`, upURL, retryBackoff, retryGiveUp, store)
}

// retryDead reads every dead letter of the relay "retry" from the admin
// API, a page at a time.
func retryDead(t *testing.T, in *Instance) []ops.DeadLetter {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	var all []ops.DeadLetter
	after := ""
	for {
		u := fmt.Sprintf("http://127.0.0.1:%d/webhook_relay/retry/dead?limit=%d&after=%s", in.AdminPort, ops.MaxPage, url.QueryEscape(after))
		resp, err := c.Get(u)
		if err != nil {
			t.Fatalf("listing dead letters: %v", err)
		}
		var page ops.DeadPage
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("listing dead letters: %s, %v", resp.Status, err)
		}
		all = append(all, page.Entries...)
		if page.Next == "" {
			return all
		}
		after = page.Next
	}
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
	// the relay attempts the failing payloads and gives them back to wait
	// out their backoff (the old engine held up to 1,024 of them and
	// claimed nothing more)
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
	testkit.Eventually(t, retryGoodBound, func() bool { return good() >= retryGood },
		"%s of %d healthy payloads delivered within %s of their sending, behind %d failing ones",
		testkit.Lazy(func() string { return fmt.Sprint(good()) }), retryGood, retryGoodBound, retryBad)
	goodTook := time.Since(goodFrom)
	t.Logf("%s: %d failing payloads sent in %s; %d healthy ones delivered %s after their sending began (bound %s)",
		store, retryBad, badSent.Round(time.Millisecond), retryGood, goodTook.Round(time.Millisecond), retryGoodBound)

	// the failing ones die at give_up_after
	var ov relayOverviewEntry
	testkit.Eventually(t, retryGiveUp+retryBackoffMx+retryDiedSlack+badSent, func() bool {
		var err error
		ov, err = faultOverview(in, "retry")
		return err == nil && ov.DeadLetters == retryBad && ov.Backlog == 0
	}, "dead letters and backlog never reached %d and 0: last %+v", retryBad, testkit.Lazy(func() string { return fmt.Sprintf("%+v", ov) }))
	allDead := time.Since(start)
	attempts := 0
	for _, r := range up.Requests() {
		if r.Status == http.StatusInternalServerError {
			attempts++
		}
	}

	// The relay's own record: each died at give_up_after from when it was
	// received (queued), never before, and not much after (its last
	// attempt is due then; a loaded machine gets to it late); each was
	// retried on its schedule meanwhile (0, 8s, give_up_after: 3 attempts,
	// 2 when the first came late).
	dead := retryDead(t, in)
	if len(dead) != retryBad {
		t.Fatalf("%d dead letters listed, want %d", len(dead), retryBad)
	}
	var lives []time.Duration
	var counts []int
	for _, d := range dead {
		lives = append(lives, d.Died.Sub(d.Received))
		counts = append(counts, d.Attempts)
	}
	slices.Sort(lives)
	slices.Sort(counts)
	t.Logf("%s: all %d dead %s after the first was sent (%d failing attempts, %.0f/s); received to died min %s median %s max %s; "+
		"attempts per failing payload min %d median %d max %d",
		store, retryBad, allDead.Round(time.Millisecond), attempts, float64(attempts)/allDead.Seconds(),
		lives[0].Round(time.Millisecond), lives[len(lives)/2].Round(time.Millisecond), lives[len(lives)-1].Round(time.Millisecond),
		counts[0], counts[len(counts)/2], counts[len(counts)-1])
	if lives[0] < retryGiveUp {
		t.Errorf("a failing payload died %s after it was received; give_up_after is %s", lives[0], retryGiveUp)
	}
	if max := lives[len(lives)-1]; max > retryGiveUp+retryBackoffMx+retryDiedSlack {
		t.Errorf("a failing payload died %s after it was received; want at most give_up_after %s + backoff max %s + %s",
			max, retryGiveUp, retryBackoffMx, retryDiedSlack)
	}
	if counts[0] < 2 {
		t.Errorf("a failing payload was attempted %d times before give_up_after %s; want 2 or more (backoff %s)", counts[0], retryGiveUp, retryBackoff)
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
