package caddytest

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// relayBlock is one webhook_relay handling /in, forwarding to upstream,
// with a fast retry schedule and whatever extra subdirectives are given.
func relayBlock(t *testing.T, upstream string, extra string) string {
	return site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		backoff 10ms 50ms
		%s
	}`, upstream, relayName(t), extra))
}

// TestRetryUntilDelivered: 503, then 500, then 200 is three attempts, and
// none after the 200.
func TestRetryUntilDelivered(t *testing.T) {
	up := newUpstream(t, barrierResponder(sequence(503, 500, 200)))
	startCaddy(t, relayBlock(t, up.URL, ""))
	in := relayURL("/in", "")

	body := payload(t)
	mustAccept(t, in, body)
	up.waitDelivered(t, body)
	barrier(t, up, in)

	hits := withBody(up.all(), body)
	if len(hits) != 3 {
		t.Fatalf("%d requests for the payload, want 3 (503, 500, 200):\n%s", len(hits), describe(hits))
	}
	for i, h := range hits {
		if h.Attempt != i+1 {
			t.Errorf("request %d carries attempt number %d, want %d", i+1, h.Attempt, i+1)
		}
		if h.Key != hits[0].Key {
			t.Errorf("request %d: Idempotency-Key %q, want %q as in the first", i+1, h.Key, hits[0].Key)
		}
	}
}

// TestRetryAfterHonoured: a 429 with Retry-After: 1 delays the next attempt
// by a second, far beyond the 10ms backoff.
func TestRetryAfterHonoured(t *testing.T) {
	up := newUpstream(t, func(h *hit) reply {
		if h.Nth == 1 {
			return reply{status: http.StatusTooManyRequests, header: map[string]string{"Retry-After": "1"}}
		}
		return reply{status: http.StatusOK}
	})
	startCaddy(t, relayBlock(t, up.URL, ""))

	body := payload(t)
	mustAccept(t, relayURL("/in", ""), body)
	hits := up.waitDelivered(t, body)
	if len(hits) != 2 {
		t.Fatalf("%d requests for the payload, want 2 (429, 200):\n%s", len(hits), describe(hits))
	}
	// Retry-After counts from when the first attempt started, a moment
	// before the upstream saw it: allow some slack, not a full backoff.
	if gap := hits[1].At.Sub(hits[0].At); gap < 900*time.Millisecond {
		t.Errorf("second attempt %s after the 429 with Retry-After: 1, want at least ~1s", gap)
	}
}

// TestRetryConnectionRefused: the upstream is down when the payload
// arrives and comes up later on the same address; the payload gets there.
func TestRetryConnectionRefused(t *testing.T) {
	addr := freeAddr(t)
	startCaddy(t, relayBlock(t, "http://"+addr, ""))

	body := payload(t)
	mustAccept(t, relayURL("/in", ""), body)
	// Stay down for a while: several 10-50ms backoff steps of refused
	// connections. (This sleep is the outage, not a wait for the relay.)
	time.Sleep(300 * time.Millisecond)

	up := startUpstreamOn(t, addr, always(http.StatusOK))
	hits := up.waitDelivered(t, body)
	if len(hits) != 1 {
		t.Errorf("%d requests for the payload once the upstream is up, want 1:\n%s", len(hits), describe(hits))
	}
	if hits[0].Attempt < 2 {
		t.Errorf("delivered on attempt %d, want a later one: the attempts while the upstream was down count too", hits[0].Attempt)
	}
}

// TestDeadLetterOn422: a 4xx other than 408, 425 and 429 is final: one
// attempt, never retried, and the payloads after it still go through.
func TestDeadLetterOn422(t *testing.T) {
	up := newUpstream(t, barrierResponder(marked(`"poison":true`, always(http.StatusUnprocessableEntity), always(http.StatusOK))))
	startCaddy(t, relayBlock(t, up.URL, ""))
	in := relayURL("/in", "")

	poison := payload(t, `"poison":true`)
	mustAccept(t, in, poison)
	up.waitFor(t, "the attempt on the 422 payload", func(hits []*hit) bool { return len(withBody(hits, poison)) > 0 })

	good := payload(t)
	mustAccept(t, in, good)
	up.waitDelivered(t, good)
	barrier(t, up, in)

	if hits := withBody(up.all(), poison); len(hits) != 1 {
		t.Errorf("%d attempts on the payload answered 422, want exactly 1:\n%s", len(hits), describe(hits))
	}
	if hits := withBody(up.all(), good); len(hits) != 1 {
		t.Errorf("%d requests for the payload after it, want 1:\n%s", len(hits), describe(hits))
	}
}

// TestGiveUpAfter: with give_up_after 200ms and an upstream that always
// answers 503, the attempts stop shortly after 200ms.
func TestGiveUpAfter(t *testing.T) {
	const (
		giveUp     = 200 * time.Millisecond
		backoffMax = 50 * time.Millisecond
	)
	up := newUpstream(t, barrierResponder(always(http.StatusServiceUnavailable)))
	startCaddy(t, relayBlock(t, up.URL, "give_up_after 200ms"))
	in := relayURL("/in", "")

	sent := time.Now()
	body := payload(t)
	mustAccept(t, in, body)
	up.waitFor(t, "a retry", func(hits []*hit) bool { return len(withBody(hits, body)) >= 2 })

	// The last attempt starts before give_up_after plus one backoff step
	// (+20% jitter) has passed; wait well beyond that. This is the quiet
	// period the test is about, not a wait for the relay.
	time.Sleep(time.Until(sent.Add(giveUp + 3*backoffMax + 450*time.Millisecond)))
	before := withBody(up.all(), body)
	barrier(t, up, in)
	time.Sleep(4 * backoffMax)
	after := withBody(up.all(), body)

	if len(after) != len(before) {
		t.Errorf("%d attempts, then %d more after give_up_after had passed; want none:\n%s",
			len(before), len(after)-len(before), describe(after))
	}
	if last := after[len(after)-1]; last.At.Sub(sent) > giveUp+2*backoffMax+400*time.Millisecond {
		t.Errorf("an attempt %s after the payload was sent, with give_up_after %s and backoff max %s",
			last.At.Sub(sent), giveUp, backoffMax)
	}
}

// TestRetryAfterTimeout: an upstream that does not answer within timeout is
// retried, with the same Idempotency-Key.
func TestRetryAfterTimeout(t *testing.T) {
	up := newUpstream(t, func(h *hit) reply {
		if h.Nth == 1 {
			return reply{hang: true}
		}
		return reply{status: http.StatusOK}
	})
	startCaddy(t, relayBlock(t, up.URL, "timeout 200ms"))

	body := payload(t)
	mustAccept(t, relayURL("/in", ""), body)
	hits := up.waitDelivered(t, body)
	if len(hits) != 2 {
		t.Fatalf("%d requests for the payload, want 2 (no answer, then 200):\n%s", len(hits), describe(hits))
	}
	if hits[1].Attempt != 2 || hits[1].Key != hits[0].Key {
		t.Errorf("retry after the timeout: attempt %d key %q, want attempt 2 with key %q", hits[1].Attempt, hits[1].Key, hits[0].Key)
	}
	if gap := hits[1].At.Sub(hits[0].At); gap < 150*time.Millisecond {
		t.Errorf("retried %s after the first attempt, before its 200ms timeout", gap)
	}
}
