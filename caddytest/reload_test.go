package caddytest

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// TestReloadUnderTraffic reloads the config (same relay name, a different
// header_up each time) while webhooks keep coming. A 200 is a promise:
// every payload answered 200 reaches the upstream, none is lost in a
// reload.
func TestReloadUnderTraffic(t *testing.T) {
	const (
		minPayloads = 300
		reloads     = 4
		senders     = 4
	)
	// every payload fails once, so that retries are pending in each reload
	up := newUpstream(t, sequence(http.StatusServiceUnavailable, http.StatusOK))
	config := func(version int) string {
		return relayBlock(t, up.URL, fmt.Sprintf("header_up X-Config-Version %d", version))
	}
	tester := startCaddy(t, config(0))
	in := relayURL("/in", "")

	var (
		stop     = make(chan struct{})
		answered atomic.Int64 // payloads answered 200
		mu       sync.Mutex
		accepted [][]byte // bodies answered 200 (accepted, or duplicate of an earlier try)
		refused  []string // payloads that never got a 200
		wg       sync.WaitGroup
		sent     atomic.Int64
	)
	for range senders {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					if sent.Load() >= minPayloads {
						return
					}
				default:
				}
				sent.Add(1)
				body := payload(t)
				if err := sendUntilOK(in, body); err != nil {
					mu.Lock()
					refused = append(refused, err.Error())
					mu.Unlock()
					continue
				}
				mu.Lock()
				accepted = append(accepted, body)
				mu.Unlock()
				answered.Add(1)
			}
		})
	}

	// reload at evenly spread points of the traffic
	for i := 1; i <= reloads; i++ {
		want := int64(i * minPayloads / (reloads + 1))
		testkit.Eventually(t, waitTimeout, func() bool { return answered.Load() >= want },
			"waiting for %d payloads answered before reload %d", want, i)
		reload(t, tester, config(i))
	}
	duringReloads := answered.Load()
	close(stop)
	wg.Wait()
	t.Logf("%d payloads sent, %d answered 200 (%d of them before the last reload finished), %d upstream requests so far",
		sent.Load(), answered.Load(), duringReloads, len(up.all()))

	mu.Lock()
	defer mu.Unlock()
	if len(refused) > 0 {
		t.Errorf("%d payloads never got a 200 (the relay must keep answering through reloads); first: %s", len(refused), refused[0])
	}
	if len(accepted) < minPayloads {
		t.Fatalf("only %d payloads answered 200, want at least %d", len(accepted), minPayloads)
	}

	hits := up.waitFor(t, fmt.Sprintf("all %d payloads answered 200 to be delivered", len(accepted)), func(hits []*hit) bool {
		return distinctDelivered(hits) >= len(accepted)
	})
	if n := distinctDelivered(hits); n != len(accepted) {
		t.Errorf("%d distinct Idempotency-Keys delivered, %d payloads answered 200", n, len(accepted))
	}
	for _, body := range accepted {
		if len(withBody(hits, body)) == 0 {
			t.Errorf("answered 200 but never delivered: %s", body)
		}
	}
	versions := make(map[string]bool)
	for i := range reloads + 1 {
		versions[fmt.Sprint(i)] = true
	}
	for _, h := range hits {
		if v := h.Header.Get("X-Config-Version"); !versions[v] {
			t.Errorf("X-Config-Version %q: not the header_up of any config loaded", v)
		}
	}

	// the settings of the last config are the ones that apply now
	body := payload(t)
	mustAccept(t, in, body)
	last := up.waitDelivered(t, body)
	if v := last[0].Header.Get("X-Config-Version"); v != fmt.Sprint(reloads) {
		t.Errorf("after the last reload a payload went out with X-Config-Version %q, want %d", v, reloads)
	}
}

// TestReloadMovesBacklogToNewUpstream: the name owns the queue. Payloads
// waiting for an upstream that keeps failing go to the new upstream after a
// reload that changes it.
func TestReloadMovesBacklogToNewUpstream(t *testing.T) {
	const n = 10
	first := newUpstream(t, always(http.StatusServiceUnavailable))
	second := newUpstream(t, always(http.StatusOK))
	tester := startCaddy(t, relayBlock(t, first.URL, ""))
	in := relayURL("/in", "")

	var bodies [][]byte
	for range n {
		body := payload(t)
		mustAccept(t, in, body)
		bodies = append(bodies, body)
	}
	first.waitFor(t, "an attempt on every payload", func(hits []*hit) bool {
		for _, b := range bodies {
			if len(withBody(hits, b)) == 0 {
				return false
			}
		}
		return true
	})

	reload(t, tester, relayBlock(t, second.URL, ""))
	for _, b := range bodies {
		hits := second.waitDelivered(t, b)
		if len(hits) != 1 {
			t.Errorf("payload delivered %d times to the new upstream, want once:\n%s", len(hits), describe(hits))
		}
	}
}

// sendUntilOK sends body the way a webhook sender does: on a 503 or a
// connection error it tries again, until it gets a 200.
func sendUntilOK(url string, body []byte) error {
	var last string
	for range 100 {
		a, err := send(http.MethodPost, url, bytes.NewReader(body))
		switch {
		case err != nil:
			last = err.Error()
		case a.status == http.StatusOK:
			if s := strings.TrimSpace(a.body); s != `{"status":"accepted"}` && s != `{"status":"duplicate"}` {
				return fmt.Errorf("200 with body %q", a.body)
			}
			return nil
		case a.status == http.StatusServiceUnavailable:
			last = "503"
		default:
			return fmt.Errorf("status %d (%s) for %.60s", a.status, a.body, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New("no 200 in 100 tries; last: " + last)
}

// distinctDelivered counts the Idempotency-Keys the upstream answered 2xx.
func distinctDelivered(hits []*hit) int {
	keys := make(map[string]bool)
	for _, h := range hits {
		if delivered(h) {
			keys[h.Key] = true
		}
	}
	return len(keys)
}

// TestReloadAppliesMaxBacklog: a reload keeps the relay's queue, and the
// new config's max_backlog is the one enforced.
func TestReloadAppliesMaxBacklog(t *testing.T) {
	down := newUpstream(t, always(http.StatusServiceUnavailable))
	tester := startCaddy(t, relayBlock(t, down.URL, "max_backlog 1"))
	in := relayURL("/in", "")

	mustAccept(t, in, payload(t))
	waiting := payload(t)
	expectStatus(t, post(t, in, waiting), http.StatusServiceUnavailable, "")

	reload(t, tester, relayBlock(t, down.URL, "max_backlog 3"))
	a := post(t, in, waiting)
	if a.status != http.StatusOK {
		t.Fatalf("after a reload raising max_backlog from 1 to 3, the second payload got %d %q; want it accepted", a.status, a.body)
	}
	mustAccept(t, in, payload(t))
	expectStatus(t, post(t, in, payload(t)), http.StatusServiceUnavailable, "")
}

// TestFailedReloadKeepsRelay: a config that fails to load leaves the
// running relay as it was: its queue, and its own delivery settings, not
// the ones of the config that failed.
func TestFailedReloadKeepsRelay(t *testing.T) {
	unsetEnv(t, unsetVar)
	// the upstream fails until the bad config has come and gone, so a
	// payload is waiting in the queue meanwhile
	var upOK atomic.Bool
	up := newUpstream(t, func(*hit) reply {
		if upOK.Load() {
			return reply{status: http.StatusOK}
		}
		return reply{status: http.StatusServiceUnavailable}
	})
	good := relayBlock(t, up.URL, "header_up X-Config-Version good")
	startCaddy(t, good)
	in := relayURL("/in", "")

	waiting := payload(t)
	mustAccept(t, in, waiting)
	up.waitFor(t, "the first attempt", func(hits []*hit) bool { return len(withBody(hits, waiting)) > 0 })

	// /in is provisioned first (routes are sorted by path length), then /x
	// fails: an unset secret
	bad := site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		backoff 10ms 50ms
		header_up X-Config-Version bad
	}
	webhook_relay /x {
		upstream %s/x
		name %s
		auth_query token {env.%s}
		store memory
	}`, up.URL, relayName(t), up.URL, relayName(t, "x"), unsetVar))
	if msg := loadError(t, bad); msg == "" {
		t.Fatal("the bad config loaded")
	}
	failed := time.Now()
	upOK.Store(true)

	up.waitDelivered(t, waiting)
	body := payload(t)
	mustAccept(t, in, body)
	up.waitDelivered(t, body)
	for _, h := range up.all() {
		if v := h.Header.Get("X-Config-Version"); h.At.After(failed) && v != "good" {
			t.Errorf("attempt %d of %.60s went out with X-Config-Version %q after a failed reload, want good", h.Attempt, h.Body, v)
		}
	}
}
