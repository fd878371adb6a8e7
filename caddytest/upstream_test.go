package caddytest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"slices"
	"testing"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// hit is one request the upstream received; its Nth counts the requests
// with its Key (Idempotency-Key) so far.
type hit = testkit.Request

// reply is what the upstream answers to one request.
type reply struct {
	status int
	header map[string]string
	// hang keeps the request open until the client gives up or the
	// upstream stops.
	hang bool
}

// responder picks the reply to a request; h.Nth tells which time this
// payload (by Idempotency-Key) is seen.
type responder func(h *hit) reply

// sequence answers the n-th request of each payload with the n-th status;
// the last status repeats.
func sequence(statuses ...int) responder {
	return func(h *hit) reply {
		return reply{status: statuses[min(h.Nth, len(statuses))-1]}
	}
}

// always answers every request with status.
func always(status int) responder { return sequence(status) }

// marked sends the payloads whose body contains mark to r, the others to
// otherwise.
func marked(mark string, r, otherwise responder) responder {
	return func(h *hit) reply {
		if bytes.Contains(h.Body, []byte(mark)) {
			return r(h)
		}
		return otherwise(h)
	}
}

// upstream is a real HTTP server on 127.0.0.1 standing in for the
// application behind the relay (a testkit.Upstream answering from a
// responder). It records every request.
type upstream struct {
	*testkit.Upstream
}

// newUpstream starts an upstream on a free port. It stops when the test
// ends.
func newUpstream(t *testing.T, respond responder) *upstream {
	t.Helper()
	return &upstream{testkit.NewUpstream(t, answerFrom(respond))}
}

// freeAddr returns an address nothing listens on (for now).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startUpstreamOn starts an upstream on addr, e.g. one from freeAddr.
func startUpstreamOn(t *testing.T, addr string, respond responder) *upstream {
	t.Helper()
	return &upstream{testkit.ListenUpstream(t, addr, answerFrom(respond))}
}

// answerFrom turns a responder into the testkit upstream's answer function.
func answerFrom(respond responder) func(*testkit.Request) testkit.Answer {
	return func(h *hit) testkit.Answer {
		rep := respond(h)
		a := testkit.Answer{Status: rep.status, Hang: rep.hang}
		if len(rep.header) > 0 {
			a.Header = make(http.Header, len(rep.header))
			for name, value := range rep.header {
				a.Header.Set(name, value)
			}
		}
		return a
	}
}

// all returns what the upstream received so far.
func (u *upstream) all() []*hit { return u.Requests() }

// waitFor waits until ok holds for what the upstream received, and returns
// that. It fails the test after waitTimeout.
func (u *upstream) waitFor(t *testing.T, what string, ok func(hits []*hit) bool) []*hit {
	t.Helper()
	return u.WaitFor(t, waitTimeout, what, ok)
}

// waitDelivered waits until the upstream answered 2xx to a request whose
// body is body, and returns every request carrying that body.
func (u *upstream) waitDelivered(t *testing.T, body []byte) []*hit {
	t.Helper()
	hits := u.waitFor(t, fmt.Sprintf("a 2xx answer to %.80s", body), func(hits []*hit) bool {
		return slices.ContainsFunc(withBody(hits, body), delivered)
	})
	return withBody(hits, body)
}

func delivered(h *hit) bool { return h.Status >= 200 && h.Status < 300 }

// withBody keeps the requests whose body is byte-identical to body.
func withBody(hits []*hit, body []byte) []*hit {
	var out []*hit
	for _, h := range hits {
		if bytes.Equal(h.Body, body) {
			out = append(out, h)
		}
	}
	return out
}

// withKey keeps the requests with the Idempotency-Key key.
func withKey(hits []*hit, key string) []*hit {
	var out []*hit
	for _, h := range hits {
		if h.Key == key {
			out = append(out, h)
		}
	}
	return out
}

func describe(hits []*hit) string { return testkit.Describe(hits) }

// barrier sends a fresh payload through the relay at url that the
// upstream answers 503 twice before it takes it, and waits until it is
// delivered. Attempts are dispatched in the order they fall due, so once
// the barrier's third attempt is through, any retry the relay had
// scheduled within two backoff steps before the barrier was sent has been
// made: the absence of a retry that should not happen can then be checked.
// The upstream must answer marked("barrier", sequence(503, 503, 200), ...).
func barrier(t *testing.T, u *upstream, url string) {
	t.Helper()
	body := payload(t, `"barrier":true`)
	mustAccept(t, url, body)
	u.waitDelivered(t, body)
}

// barrierResponder wraps r so that barrier payloads are answered 503, 503,
// then 200.
func barrierResponder(r responder) responder {
	return marked(`"barrier":true`, sequence(503, 503, 200), r)
}
