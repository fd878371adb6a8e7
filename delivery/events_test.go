package delivery

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// event is one event the engine emitted.
type event struct {
	name string
	data map[string]any
}

// recordedEvents is an Events that records what it is given. wanted lists
// the names it asks for; nil: all.
type recordedEvents struct {
	wanted []string
	mu     sync.Mutex
	events []event
	asked  atomic.Int64 // Wants calls
}

func (r *recordedEvents) Wants(name string) bool {
	r.asked.Add(1)
	if r.wanted == nil {
		return true
	}
	for _, w := range r.wanted {
		if w == name {
			return true
		}
	}
	return false
}

func (r *recordedEvents) Emit(name string, data map[string]any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{name, data})
}

// named returns the events named name so far.
func (r *recordedEvents) named(name string) []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []event
	for _, e := range r.events {
		if e.name == name {
			out = append(out, e)
		}
	}
	return out
}

func (r *recordedEvents) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprint(r.events)
}

// waitEvents waits for n events named name and returns them.
func (r *recordedEvents) waitEvents(t *testing.T, name string, n int) []event {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, func() bool { return len(r.named(name)) >= n },
		"want %d %s events; have %v", n, name, testkit.Lazy(r.all))
	return r.named(name)
}

func startEngineWithEvents(t *testing.T, store queue.Store, s *Settings, ev Events) {
	e := Start(Config{Store: store, Settings: s, PollInterval: 20 * time.Millisecond, Events: ev, Relay: "hooks"})
	t.Cleanup(func() { e.Stop(time.Second) })
}

// checkData checks the fields of an event's data that want names.
func checkData(t *testing.T, ev event, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if got, ok := ev.data[k]; !ok || got != v {
			t.Errorf("%s: %s = %#v; want %#v (data %v)", ev.name, k, got, v, ev.data)
		}
	}
}

// Every delivered payload is one delivered event, with the relay, the
// destination, the entry's id and key, its attempts and the last status.
func TestEventDeliveredOncePerPayload(t *testing.T) {
	var calls atomic.Int64
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer {
		if calls.Add(1) == 1 {
			return testkit.Answer{Status: http.StatusServiceUnavailable}
		}
		return testkit.Answer{}
	})
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	ev := &recordedEvents{}
	s := settingsFor(t, up.URL)
	first := admit(t, store, "k1", "{}")
	second := admit(t, store, "k2", "{}")
	startEngineWithEvents(t, store, s, ev)

	got := ev.waitEvents(t, EventDelivered, 2)
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	if got = ev.named(EventDelivered); len(got) != 2 {
		t.Fatalf("%d delivered events for 2 payloads: %v", len(got), got)
	}
	// the first attempt of all was answered 503: that payload took two
	attempts := map[string]int{}
	for _, r := range up.Requests() {
		attempts[r.Key]++
	}
	if attempts["k1"]+attempts["k2"] != 3 {
		t.Fatalf("upstream saw %v; want 3 attempts in all", attempts)
	}
	byID := map[any]event{got[0].data["id"]: got[0], got[1].data["id"]: got[1]}
	checkData(t, byID[first.ID], map[string]any{"relay": "hooks", "destination": DefaultDestination,
		"id": first.ID, "key": "k1", "attempts": attempts["k1"], "status": 200})
	checkData(t, byID[second.ID], map[string]any{"relay": "hooks", "destination": DefaultDestination,
		"id": second.ID, "key": "k2", "attempts": attempts["k2"], "status": 200})
	if n := len(ev.named(EventDeadLetter)); n != 0 {
		t.Errorf("%d dead_letter events; want none", n)
	}
}

// A payload the upstream refuses with a 4xx is one dead_letter event, with
// the status and the reason.
func TestEventDeadLetterOn4xx(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(http.StatusUnprocessableEntity))
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	ev := &recordedEvents{}
	s := settingsFor(t, up.URL)
	s.Destination = "app"
	ent := admit(t, store, "poison", "{}")
	startEngineWithEvents(t, store, s, ev)

	got := ev.waitEvents(t, EventDeadLetter, 1)
	waitStats(t, store, func(st queue.Stats) bool { return st.Dead == 1 })
	checkData(t, got[0], map[string]any{"relay": "hooks", "destination": "app",
		"id": ent.ID, "key": "poison", "attempts": 1, "status": 422,
		"error": "upstream answered 422 Unprocessable Entity"})
	if n := len(ev.named(EventDelivered)); n != 0 {
		t.Errorf("%d delivered events; want none", n)
	}
}

// An engine whose Events wants nothing emits nothing, and is asked once per
// delivered payload.
func TestEventNotWantedNotEmitted(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(200))
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	ev := &recordedEvents{wanted: []string{}}
	admit(t, store, "k", "{}")
	startEngineWithEvents(t, store, settingsFor(t, up.URL), ev)
	testkit.Eventually(t, 10*time.Second, func() bool { return ev.asked.Load() == 1 }, "Wants never asked")
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	if ev.all() != "[]" {
		t.Errorf("emitted %s; want nothing", ev.all())
	}
}

// An upstream that refuses connections is upstream_down once
// unreachableAfter attempts in a row went unanswered, and upstream_up when
// it answers again, with how long it was down; once each.
func TestEventUpstreamDownAndUp(t *testing.T) {
	srv := testkit.NewServer(t, "127.0.0.1:0", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Stop()
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	ev := &recordedEvents{}
	s := settingsFor(t, "http://"+srv.Addr)
	for i := range 5 {
		admit(t, store, fmt.Sprint("k", i), "{}")
	}
	startEngineWithEvents(t, store, s, ev)

	down := ev.waitEvents(t, EventUpstreamDown, 1)
	checkData(t, down[0], map[string]any{"relay": "hooks", "destination": DefaultDestination,
		"upstream": srv.Addr, "attempts": unreachableAfter})
	if msg, _ := down[0].data["error"].(string); msg == "" {
		t.Errorf("upstream_down without the error: %v", down[0].data)
	}
	if n := len(ev.named(EventUpstreamUp)); n != 0 {
		t.Fatalf("upstream_up while it refuses connections: %v", ev.all())
	}

	srv.Start()
	up := ev.waitEvents(t, EventUpstreamUp, 1)
	checkData(t, up[0], map[string]any{"relay": "hooks", "destination": DefaultDestination,
		"upstream": srv.Addr, "status": 200})
	if ms, _ := up[0].data["down_ms"].(int64); ms < 0 {
		t.Errorf("down_ms = %v", up[0].data["down_ms"])
	}
	ev.waitEvents(t, EventDelivered, 5)
	if d, u := len(ev.named(EventUpstreamDown)), len(ev.named(EventUpstreamUp)); d != 1 || u != 1 {
		t.Errorf("%d upstream_down and %d upstream_up events; want 1 each: %v", d, u, ev.all())
	}
	// down, then up, then nothing more of the upstream
	ev.mu.Lock()
	defer ev.mu.Unlock()
	var order []string
	for _, e := range ev.events {
		if e.name != EventDelivered {
			order = append(order, e.name)
		}
	}
	if fmt.Sprint(order) != fmt.Sprint([]string{EventUpstreamDown, EventUpstreamUp}) {
		t.Errorf("outage events %v; want down then up", order)
	}
}
