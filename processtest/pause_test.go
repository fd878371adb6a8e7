package processtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// pauseSite is a site with the relay under test at /hook (named name, in
// store, forwarding to up) and a relay on the memory store at /control
// forwarding to control: a relay that is not paused, whose delivery shows
// that the process had its chances to deliver.
func pauseSite(name, store string, up, control *Upstream) string {
	return fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay /hook %s {
		name %s
		key json.id
		backoff 50ms 500ms
		store %s
	}
	webhook_relay /control %s {
		name control
		key json.id
		store memory
	}
}`, up.URL("/hook"), name, store, control.URL("/hook"))
}

// adminPost posts to the instance's admin API and fails the test unless
// it answers 200; it returns the answer.
func adminPost(t *testing.T, in *Instance, path string) string {
	t.Helper()
	resp, err := httpClient.Post(fmt.Sprintf("http://127.0.0.1:%d%s", in.AdminPort, path), "application/json", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	return string(b)
}

// pausedInOverview reads whether the relay's destination "upstream" is
// paused, as the instance's admin API shows it.
func pausedInOverview(t *testing.T, in *Instance, relay string) bool {
	t.Helper()
	resp, err := httpClient.Get(fmt.Sprintf("http://127.0.0.1:%d/webhook_relay/", in.AdminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var relays []struct {
		Name         string `json:"name"`
		Destinations []struct {
			Name   string `json:"name"`
			Paused bool   `json:"paused"`
		} `json:"destinations"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&relays); err != nil {
		t.Fatal(err)
	}
	for _, r := range relays {
		if r.Name == relay {
			return len(r.Destinations) == 1 && r.Destinations[0].Name == "upstream" && r.Destinations[0].Paused
		}
	}
	t.Fatalf("no relay %s in the overview", relay)
	return false
}

// sendRange posts payloads from..to-1 to url, each of which must be
// accepted.
func sendRange(t *testing.T, url string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if r := postResp(url, payload(i)); !r.accepted() {
			t.Fatalf("payload %d to %s: %s, want 200 accepted", i, url, r)
		}
	}
}

// controlled sends one payload to the instance's control relay and waits
// until its upstream has it: the process delivered meanwhile.
func controlled(t *testing.T, in *Instance, control *Upstream, i int) {
	t.Helper()
	sendRange(t, in.URL("/control"), i, i+1)
	testkit.Eventually(t, 10*time.Second, func() bool { return len(control.Delivered()) >= i+1-controlBase },
		"the control relay never delivered payload %d", i)
}

// waitDeliveredAcross waits until n distinct keys were delivered to the
// upstreams together, then checks none was delivered twice.
func waitDeliveredAcross(t *testing.T, n int, ups ...*Upstream) {
	t.Helper()
	delivered := func() map[string]int {
		all := map[string]int{}
		for _, u := range ups {
			for k, c := range u.Delivered() {
				all[k] += c
			}
		}
		return all
	}
	testkit.Eventually(t, 15*time.Second, func() bool { return len(delivered()) >= n },
		"%s of %d payloads delivered", testkit.Lazy(func() string { return fmt.Sprint(len(delivered())) }), n)
	for k, c := range delivered() {
		if c != 1 {
			t.Errorf("%s delivered %d times", k, c)
		}
	}
}

// controlBase numbers the control payloads apart from the others.
const controlBase = 9000

// A pause set through the admin API is kept in the bolt file: after a
// restart the destination is still paused, payloads are accepted and
// nothing is delivered until the resume.
func TestPauseSurvivesRestartOnBolt(t *testing.T) {
	in := NewInstance(t)
	up, control := NewUpstream(t), NewUpstream(t)
	up.Start()
	control.Start()
	site := pauseSite("held", "bolt", up, control)
	p := in.Start(site)
	if got := adminPost(t, in, "/webhook_relay/held/destinations/upstream/pause"); !strings.Contains(got, `"paused":true`) {
		t.Fatalf("pause answered %s", got)
	}
	p.Stop(15 * time.Second)

	p = in.Start(site)
	if !pausedInOverview(t, in, "held") {
		t.Fatalf("after the restart the overview shows the destination not paused")
	}
	const n = 5
	sendRange(t, in.URL("/hook"), 0, n)
	controlled(t, in, control, controlBase)
	if got := len(up.Requests()); got != 0 {
		t.Fatalf("the paused destination's upstream got %d requests after the restart:\n%s", got, testkit.Describe(up.Requests()))
	}

	adminPost(t, in, "/webhook_relay/held/resume")
	waitDelivered(t, up, n, 15*time.Second)
	if pausedInOverview(t, in, "held") {
		t.Errorf("the overview shows the destination paused after the resume")
	}
	p.Stop(15 * time.Second)
}

// Two instances on one Redis share the pause: paused through A's admin
// API, B delivers nothing of what comes after the pause, though it accepts
// it; resumed through B, both deliver.
func TestPauseSharedOnRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rc := inspector(t, srv)
	store := fmt.Sprintf("redis %s", srv.URL())
	a, b := NewInstance(t), NewInstance(t)
	upA, upB, controlA, controlB := NewUpstream(t), NewUpstream(t), NewUpstream(t), NewUpstream(t)
	for _, u := range []*Upstream{upA, upB, controlA, controlB} {
		u.Start()
	}
	a.Start(pauseSite(redisRelayName, store, upA, controlA))
	b.Start(pauseSite(redisRelayName, store, upB, controlB))

	// both deliver before the pause
	sendRange(t, a.URL("/hook"), 0, 1)
	sendRange(t, b.URL("/hook"), 1, 2)
	waitDeliveredAcross(t, 2, upA, upB)
	before := len(upA.Requests()) + len(upB.Requests())

	adminPost(t, a, "/webhook_relay/"+redisRelayName+"/pause")
	if !pausedInOverview(t, b, redisRelayName) {
		t.Fatalf("B's overview does not show the pause set through A")
	}
	// at once, to both: B's engine is woken by each admit and must find
	// the pause before it attempts anything
	const n = 10
	sendRange(t, b.URL("/hook"), 2, 2+n)
	sendRange(t, a.URL("/hook"), 2+n, 2+2*n)
	controlled(t, b, controlB, controlBase)
	controlled(t, a, controlA, controlBase)
	if after := len(upA.Requests()) + len(upB.Requests()); after != before {
		t.Fatalf("%d requests reached the upstreams after the pause:\nA:\n%s\nB:\n%s", after-before,
			testkit.Describe(upA.Requests()), testkit.Describe(upB.Requests()))
	}
	if q := mustQueue(t, rc); q.Len != 2*n {
		t.Errorf("in Redis while paused: %s; want a backlog of %d", q, 2*n)
	}
	// what an engine claimed before it read the pause it gave back: a
	// released entry stays pending, idle past any visibility timeout
	pending, err := rc.XPendingExt(t.Context(), &redis.XPendingExtArgs{Stream: redisStream, Group: "relay", Start: "-", End: "+", Count: 100}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pending {
		if p.Idle < time.Hour {
			t.Errorf("entry %s held by %s (idle %s) while paused; want it given back", p.ID, p.Consumer, p.Idle)
		}
	}

	adminPost(t, b, "/webhook_relay/"+redisRelayName+"/destinations/upstream/resume")
	waitDeliveredAcross(t, 2+2*n, upA, upB)
	// both instances deliver again: each takes what is sent to it at once
	// (an admit wakes its own engine; the other one polls)
	fromA, fromB := len(upA.Requests()), len(upB.Requests())
	sendRange(t, a.URL("/hook"), 100, 110)
	testkit.Eventually(t, 10*time.Second, func() bool { return len(upA.Requests()) > fromA }, "A delivers nothing after the resume")
	sendRange(t, b.URL("/hook"), 110, 120)
	testkit.Eventually(t, 10*time.Second, func() bool { return len(upB.Requests()) > fromB }, "B delivers nothing after the resume")
	waitQueueEmpty(t, rc, 15*time.Second)
}
