package caddytest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// The test build's own events handler, events.handlers.webhook_relay_test_sink:
// it records every event it is given, with the tag of its config
// (`webhook_relay_test_sink <tag>`).
func init() {
	caddy.RegisterModule(eventSink{})
}

type eventSink struct {
	Tag string `json:"tag,omitempty"`
}

func (eventSink) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.webhook_relay_test_sink",
		New: func() caddy.Module { return new(eventSink) },
	}
}

func (s *eventSink) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		s.Tag = d.Val()
	}
	return nil
}

func (s *eventSink) Handle(_ context.Context, e caddy.Event) error {
	origin := ""
	if e.Origin() != nil {
		origin = string(e.Origin().CaddyModule().ID)
	}
	sunk.mu.Lock()
	defer sunk.mu.Unlock()
	sunk.events = append(sunk.events, sunkEvent{name: e.Name(), origin: origin, tag: s.Tag, data: e.Data})
	return nil
}

var (
	_ caddyevents.Handler   = (*eventSink)(nil)
	_ caddyfile.Unmarshaler = (*eventSink)(nil)
)

// sunkEvent is one event the sink was given.
type sunkEvent struct {
	name, origin, tag string
	data              map[string]any
}

func (e sunkEvent) String() string { return fmt.Sprintf("%s(%s) %v", e.name, e.tag, e.data) }

// sunk is every event the sinks were given, of every test.
var sunk struct {
	mu     sync.Mutex
	events []sunkEvent
}

// eventsOf returns the events named name of relay (all names: "").
func eventsOf(relay, name string) []sunkEvent {
	sunk.mu.Lock()
	defer sunk.mu.Unlock()
	var out []sunkEvent
	for _, e := range sunk.events {
		if e.data["relay"] == relay && (name == "" || e.name == name) {
			out = append(out, e)
		}
	}
	return out
}

// forgetEvents drops what the sinks were given for relay, so a test run
// again in the same process (-count) sees only its own run's events.
func forgetEvents(relay string) {
	sunk.mu.Lock()
	defer sunk.mu.Unlock()
	kept := sunk.events[:0]
	for _, e := range sunk.events {
		if e.data["relay"] != relay {
			kept = append(kept, e)
		}
	}
	sunk.events = kept
}

// waitEvent waits for an event named name of relay that ok accepts, and
// returns it.
func waitEvent(t *testing.T, relay, name string, ok func(sunkEvent) bool) sunkEvent {
	t.Helper()
	var found sunkEvent
	testkit.Eventually(t, waitTimeout, func() bool {
		for _, e := range eventsOf(relay, name) {
			if ok(e) {
				found = e
				return true
			}
		}
		return false
	}, "no %s event of relay %s came; all of it: %v", name, relay, testkit.Lazy(func() string { return fmt.Sprint(eventsOf(relay, "")) }))
	return found
}

// withID accepts the events of the payload with id.
func withID(id string) func(sunkEvent) bool {
	return func(e sunkEvent) bool { return e.data["id"] == id }
}

// withEvents adds the global events option that sends the relay's four
// events to the sink tagged tag.
func withEvents(cfg, tag string) string {
	var b strings.Builder
	b.WriteString("\tevents {\n")
	for _, name := range []string{"delivered", "dead_letter", "upstream_down", "upstream_up"} {
		fmt.Fprintf(&b, "\t\ton webhook_relay.%s webhook_relay_test_sink %s\n", name, tag)
	}
	b.WriteString("\t}\n")
	return strings.Replace(cfg, "\tgrace_period 1s\n", "\tgrace_period 1s\n"+b.String(), 1)
}

// checkEvent checks an event's origin and the data fields want names.
func checkEvent(t *testing.T, e sunkEvent, want map[string]any) {
	t.Helper()
	if e.origin != "http.handlers.webhook_relay" {
		t.Errorf("%s comes from %q; want http.handlers.webhook_relay", e.name, e.origin)
	}
	for k, v := range want {
		if got, ok := e.data[k]; !ok || got != v {
			t.Errorf("%s: %s = %#v; want %#v (data %v)", e.name, k, got, v, e.data)
		}
	}
}

// deliveredEvent waits for the delivered event of the payload the upstream
// took in hit.
func deliveredEvent(t *testing.T, relay string, hit *hit) sunkEvent {
	t.Helper()
	return waitEvent(t, relay, "webhook_relay.delivered", func(e sunkEvent) bool { return e.data["key"] == hit.Key })
}

// TestEventDelivered: one delivered payload is exactly one
// webhook_relay.delivered event, from the relay's handler, with its relay,
// destination, id, key, attempts and status.
func TestEventDelivered(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	relay := relayName(t)
	forgetEvents(relay)
	startCaddy(t, withEvents(relayBlock(t, up.URL, ""), "only"))
	in := relayURL("/in", "")

	body := payload(t)
	mustAccept(t, in, body)
	hit := up.waitDelivered(t, body)[0]
	ev := deliveredEvent(t, relay, hit)
	checkEvent(t, ev, map[string]any{"relay": relay, "destination": "upstream", "key": hit.Key, "attempts": 1, "status": 200})
	id, _ := ev.data["id"].(string)
	if id == "" {
		t.Fatalf("delivered event without the payload's id: %v", ev)
	}

	// a later payload's event has come: no second one for the first
	next := payload(t)
	mustAccept(t, in, next)
	deliveredEvent(t, relay, up.waitDelivered(t, next)[0])
	if got := eventsOf(relay, ""); len(got) != 2 {
		t.Errorf("%d events for 2 delivered payloads; want 2: %v", len(got), got)
	}
}

// TestEventDeadLetter: a payload the upstream answers 422 is one
// webhook_relay.dead_letter event, with the status and the reason.
func TestEventDeadLetter(t *testing.T) {
	up := newUpstream(t, marked(`"poison":true`, always(http.StatusUnprocessableEntity), always(http.StatusOK)))
	relay := relayName(t)
	forgetEvents(relay)
	startCaddy(t, withEvents(relayBlock(t, up.URL, ""), "only"))
	in := relayURL("/in", "")

	poison := payload(t, `"poison":true`)
	mustAccept(t, in, poison)
	hit := up.waitFor(t, "the 422", func(hits []*hit) bool { return len(withBody(hits, poison)) > 0 })[0]
	ev := waitEvent(t, relay, "webhook_relay.dead_letter", func(e sunkEvent) bool { return e.data["key"] == hit.Key })
	checkEvent(t, ev, map[string]any{"relay": relay, "destination": "upstream", "attempts": 1, "status": 422,
		"error": "upstream answered 422 Unprocessable Entity"})

	next := payload(t)
	mustAccept(t, in, next)
	deliveredEvent(t, relay, up.waitDelivered(t, next)[0])
	if got := eventsOf(relay, "webhook_relay.dead_letter"); len(got) != 1 {
		t.Errorf("%d dead_letter events; want 1: %v", len(got), got)
	}
}

// TestEventUpstreamDownAndUp: an upstream that refuses connections is one
// webhook_relay.upstream_down event once the relay takes it for down, and
// one webhook_relay.upstream_up when a server listens there again.
func TestEventUpstreamDownAndUp(t *testing.T) {
	addr := freeAddr(t)
	relay := relayName(t)
	forgetEvents(relay)
	startCaddy(t, withEvents(relayBlock(t, "http://"+addr, ""), "only"))

	body := payload(t)
	mustAccept(t, relayURL("/in", ""), body)
	down := waitEvent(t, relay, "webhook_relay.upstream_down", func(sunkEvent) bool { return true })
	checkEvent(t, down, map[string]any{"relay": relay, "destination": "upstream", "upstream": addr, "attempts": 3})
	if up := eventsOf(relay, "webhook_relay.upstream_up"); len(up) != 0 {
		t.Fatalf("upstream_up while nothing listens: %v", up)
	}

	up := startUpstreamOn(t, addr, always(http.StatusOK))
	hit := up.waitDelivered(t, body)[0]
	back := waitEvent(t, relay, "webhook_relay.upstream_up", func(sunkEvent) bool { return true })
	checkEvent(t, back, map[string]any{"relay": relay, "destination": "upstream", "upstream": addr, "status": 200})
	ev := deliveredEvent(t, relay, hit)
	checkEvent(t, ev, map[string]any{"attempts": hit.Attempt})
	if d, u := len(eventsOf(relay, "webhook_relay.upstream_down")), len(eventsOf(relay, "webhook_relay.upstream_up")); d != 1 || u != 1 {
		t.Errorf("%d upstream_down and %d upstream_up events; want 1 each: %v", d, u, eventsOf(relay, ""))
	}
}

// TestEventAfterReload: after a reload the relay's events go to the new
// config's events app, and to it alone.
func TestEventAfterReload(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	relay := relayName(t)
	forgetEvents(relay)
	tester := startCaddy(t, withEvents(relayBlock(t, up.URL, ""), "first"))
	in := relayURL("/in", "")

	body := payload(t)
	mustAccept(t, in, body)
	if ev := deliveredEvent(t, relay, up.waitDelivered(t, body)[0]); ev.tag != "first" {
		t.Errorf("event went to the sink of config %q; want first", ev.tag)
	}

	reload(t, tester, withEvents(relayBlock(t, up.URL, ""), "second"))
	body = payload(t)
	mustAccept(t, in, body)
	hit := up.waitDelivered(t, body)[0]
	ev := deliveredEvent(t, relay, hit)
	if ev.tag != "second" {
		t.Errorf("event after the reload went to the sink of config %q; want second", ev.tag)
	}
	if got := eventsOf(relay, ""); len(got) != 2 {
		t.Errorf("%d events for 2 delivered payloads; want 2: %v", len(got), got)
	}
}
