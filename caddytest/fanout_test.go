package caddytest

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// TestDestinationFanOut: one relay, two destinations: the app takes every
// result, the archive the image results only (a filter). The app fails
// (503) for a while: the archive gets its images meanwhile, never held up,
// and once the app recovers it gets every payload. Each payload reaches
// each destination that takes it exactly once, with the same
// Idempotency-Key, and nothing is left stored. On every store the relay
// runs with in one process.
func TestDestinationFanOut(t *testing.T) {
	for _, store := range []string{"memory", "bolt"} {
		t.Run(store, func(t *testing.T) { testFanOut(t, store) })
	}
}

func testFanOut(t *testing.T, store string) {
	var appUp atomic.Bool
	app := newUpstream(t, func(*hit) reply {
		if appUp.Load() {
			return reply{status: http.StatusOK}
		}
		return reply{status: http.StatusServiceUnavailable}
	})
	archive := newUpstream(t, always(http.StatusOK))
	name := relayName(t)
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		name %s
		store %s
		backoff 10ms 100ms
		history off # so that a body stored is a body some destination still needs
		destination app %s/app
		destination archive %s/archive {
			filter `+"`"+`body.taskType == "imageInference"`+"`"+`
		}
	}`, name, store, app.URL, archive.URL)))
	base := opsScrapeMetrics(t)

	const n = 12
	images := map[string]bool{}
	for i := range n {
		task, kind := fmt.Sprintf("task-%d", i), "imageInference"
		if i%3 == 0 {
			kind = "videoInference"
		} else {
			images[task] = true
		}
		body := fmt.Appendf(nil, `{"taskType":%q,"taskUUID":%q,"imageUUID":"img-%d"}`, kind, task, i)
		mustAccept(t, relayURL("/in", ""), body, "Content-Type: application/json")
	}

	// the archive has every image while the app still fails
	archived := archive.waitFor(t, "every image at the archive", func(hits []*hit) bool {
		return len(deliveredKeys(hits)) == len(images)
	})
	if got := deliveredKeys(app.all()); len(got) != 0 {
		t.Fatalf("the app, answering 503, has %v delivered", got)
	}
	if len(app.all()) == 0 {
		t.Fatal("the app got no attempt while the archive got every image")
	}
	for _, h := range archived {
		if !images[taskOf(h)] {
			t.Errorf("the archive got %s, which is not an image result", taskOf(h))
		}
	}

	appUp.Store(true)
	app.waitFor(t, "every payload at the app", func(hits []*hit) bool { return len(deliveredKeys(hits)) == n })

	// exactly once per destination that takes it, under the same key
	for dest, up := range map[string]*upstream{"app": app, "archive": archive} {
		for key, times := range deliveredKeys(up.all()) {
			if times != 1 {
				t.Errorf("%s: %s delivered %d times, want once", dest, key, times)
			}
		}
	}
	for key := range deliveredKeys(archive.all()) {
		if deliveredKeys(app.all())[key] != 1 {
			t.Errorf("the archive has %s under a key the app never had", key)
		}
	}
	opsWaitOverview(t, name, "nothing queued or stored", func(s *opsRelayStatus) bool {
		return intOf(s.Backlog) == 0 && s.StoredBytes == 0
	})
	s := opsScrapeMetrics(t)
	grew := func(labels ...string) float64 {
		return s.value(t, labels[0], labels[1:]...) - max(base.value(t, labels[0], labels[1:]...), 0)
	}
	r := "relay=" + name
	if got := grew(opsDeliveries, r, "destination=archive", "result=success"); got != float64(len(images)) {
		t.Errorf("deliveries{destination=archive,result=success} grew by %v, want %d", got, len(images))
	}
	if got := grew(opsDeliveries, r, "destination=archive", "result=retry"); got != 0 {
		t.Errorf("deliveries{destination=archive,result=retry} grew by %v, want 0: the app's failures are its own", got)
	}
	if got := grew(opsDeliveries, r, "destination=app", "result=success"); got != n {
		t.Errorf("deliveries{destination=app,result=success} grew by %v, want %d", got, n)
	}
	if got := grew(opsDeliveries, r, "destination=app", "result=retry"); got < 1 {
		t.Errorf("deliveries{destination=app,result=retry} grew by %v, want the app's failures", got)
	}
}

// deliveredKeys counts the 2xx answers by Idempotency-Key.
func deliveredKeys(hits []*hit) map[string]int {
	out := map[string]int{}
	for _, h := range hits {
		if delivered(h) {
			out[h.Key]++
		}
	}
	return out
}

// taskOf is the taskUUID in a fan-out test's body.
func taskOf(h *hit) string {
	_, rest, _ := strings.Cut(string(h.Body), `"taskUUID":"`)
	task, _, _ := strings.Cut(rest, `"`)
	return task
}
