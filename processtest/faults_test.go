package processtest

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
)

// Fault tests: Runware-like senders post webhooks to the built Caddy while
// faults are injected at random (seeded) intervals; once everything is
// healthy again, every payload the sender got a 200 for must reach the
// upstream. Short by default; longer with e.g.
//
//	go test -race -count=1 -v -run 'Fault' ./processtest/ -faults.duration=5m
//
// Rerun a failing schedule with -faults.seed=<the seed it printed>.
var (
	faultsDuration = flag.Duration("faults.duration", 20*time.Second, "fault tests: how long traffic flows while faults are injected, per store")
	faultsSeed     = flag.Uint64("faults.seed", 0, "fault tests: seed of the random fault schedule; 0 picks one from the clock")
)

// faultSeed returns the seed for t and logs it.
func faultSeed(t *testing.T) uint64 {
	seed := *faultsSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -faults.seed=%d)", seed, seed)
	return seed
}

// faultRelayName is the relay's name in the fault tests.
const faultRelayName = "faults"

// faultSite is the Caddyfile site of the fault tests: a relay with a short
// timeout and backoff so that a run converges quickly.
func faultSite(up *ChaosUpstream, store string, extra string) string {
	return fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay %s {
		name %s
		store %s
		timeout 1s
		backoff 50ms 1s
		concurrency 16
		%s
	}
}`, up.URL("/hook"), faultRelayName, store, extra)
}

// faultNode is one Caddy instance of a fault test and its current process.
type faultNode struct {
	name string
	in   *Instance
	site string
	p    *Process
}

func (n *faultNode) running() bool { return n.p != nil && !n.p.Exited() }

func (n *faultNode) start() {
	if !n.running() {
		n.p = n.in.Start(n.site)
	}
}

// relayOverviewEntry is one relay in GET /webhook_relay/.
type relayOverviewEntry struct {
	Name        string           `json:"name"`
	Backlog     int              `json:"backlog"`
	InFlight    int              `json:"in_flight"`
	DeadLetters int              `json:"dead_letters"`
	MemoryBytes int64            `json:"memory_bytes"`
	Requests    map[string]int64 `json:"requests"`
	Deliveries  map[string]int64 `json:"deliveries"`
	Error       string           `json:"error"`
}

// faultOverview reads the admin API's overview of in's relay named name.
func faultOverview(in *Instance, name string) (relayOverviewEntry, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/webhook_relay/", in.AdminPort))
	if err != nil {
		return relayOverviewEntry{}, err
	}
	defer resp.Body.Close()
	var all []relayOverviewEntry
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		return relayOverviewEntry{}, err
	}
	for _, r := range all {
		if r.Name == name {
			if r.Error != "" {
				return r, fmt.Errorf("relay %s: %s", name, r.Error)
			}
			return r, nil
		}
	}
	return relayOverviewEntry{}, fmt.Errorf("no relay %q in %d relays", name, len(all))
}

// faultRig runs the fault schedule against some nodes.
type faultRig struct {
	t     *testing.T
	rng   *rand.Rand
	up    *ChaosUpstream
	nodes []*faultNode
	redis *redistest.Server // nil for bolt
	done  map[string]int    // fault -> times injected
	deck  []string          // faults still to inject in this round
}

func (r *faultRig) pause(lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(r.rng.Int64N(int64(hi-lo)+1)))
}

// inject injects one random fault.
func (r *faultRig) inject() string {
	t := r.t
	n := r.nodes[r.rng.IntN(len(r.nodes))]
	if !n.running() { // left down by an earlier kill: bring it back
		n.start()
		return "restart " + n.name
	}
	if len(r.deck) == 0 {
		// a shuffled deck, so that even a short run meets every fault
		r.deck = []string{"kill9", "sigterm", "reload", "weather", "weather", "upstream"}
		if r.redis != nil {
			r.deck = append(r.deck, "redis")
		}
		r.rng.Shuffle(len(r.deck), func(i, j int) { r.deck[i], r.deck[j] = r.deck[j], r.deck[i] })
	}
	f := r.deck[0]
	r.deck = r.deck[1:]
	r.done[f]++
	switch f {
	case "kill9":
		n.p.Kill()
		// with another node up, sometimes leave this one down for a while
		if len(r.nodes) > 1 && r.rng.IntN(2) == 0 {
			return "kill -9 " + n.name + " (left down)"
		}
		r.pause(0, time.Second)
		n.start()
		return "kill -9 " + n.name + " + restart"
	case "sigterm":
		took := n.p.Stop(30 * time.Second)
		r.pause(0, 500*time.Millisecond)
		n.start()
		return fmt.Sprintf("SIGTERM %s (exited in %s) + restart", n.name, took.Round(time.Millisecond))
	case "reload":
		k := 3 + r.rng.IntN(4)
		for i := range k {
			if i%2 == 0 {
				faultReloadAdmin(t, n.in)
			} else {
				faultReloadCLI(t, n)
			}
		}
		return fmt.Sprintf("reload storm on %s: %d reloads", n.name, k)
	case "weather":
		w := []ChaosWeather{WeatherHealthy, WeatherFlapping, WeatherFlapping, WeatherDown503, WeatherHang, WeatherSlow}[r.rng.IntN(6)]
		r.up.SetWeather(w)
		return "upstream weather " + w.String()
	case "upstream":
		if r.up.Running() {
			r.up.Stop()
			return "upstream stopped (connection refused)"
		}
		r.up.Start()
		return "upstream started"
	case "redis":
		r.redis.Kill()
		r.pause(200*time.Millisecond, 2*time.Second)
		r.redis.Restart()
		return "redis-server kill -9 + restart"
	}
	return ""
}

// heal brings everything back: upstream up and healthy, every node running.
func (r *faultRig) heal() {
	r.up.SetWeather(WeatherHealthy)
	r.up.Start()
	for _, n := range r.nodes {
		n.start()
	}
}

// faultReloadAdmin posts the running config again to the admin endpoint,
// forcing a reload of an unchanged config.
func faultReloadAdmin(t *testing.T, in *Instance) {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second}
	base := fmt.Sprintf("http://127.0.0.1:%d", in.AdminPort)
	resp, err := c.Get(base + "/config/")
	if err != nil {
		t.Errorf("reload: reading the config: %v", err)
		return
	}
	cfg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodPost, base+"/load", bytes.NewReader(cfg))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cache-Control", "must-revalidate") // reload even though unchanged
	resp, err = c.Do(req)
	if err != nil {
		t.Errorf("reload: POST /load: %v", err)
		return
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("reload: POST /load: %d %s", resp.StatusCode, b)
	}
}

// faultReloadCLI runs `caddy reload --force` with the node's Caddyfile.
func faultReloadCLI(t *testing.T, n *faultNode) {
	t.Helper()
	p := n.in.Spawn("reload", "--config", n.in.WriteCaddyfile(n.site), "--adapter", "caddyfile", "--force")
	if err := p.Wait(30 * time.Second); err != nil {
		t.Errorf("caddy reload on %s: %v\n%s", n.name, err, p.Tail(5))
	}
}

// runFaults drives traffic and faults for the configured duration, heals,
// waits for the backlog to drain and checks that nothing acknowledged was
// lost.
func runFaults(t *testing.T, store string, seed uint64, rig *faultRig, drainBound time.Duration) {
	dur := *faultsDuration
	targets := make([]string, len(rig.nodes))
	for i, n := range rig.nodes {
		targets[i] = n.in.URL("/hook")
	}
	sim := NewSim(t, SimConfig{
		Seed:           seed,
		Senders:        6,
		Gap:            60 * time.Millisecond,
		MaxOutstanding: 64,
		BatchMax:       4,
		Targets:        func() []string { return targets },
	})
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	sim.Run(ctx)

	start := time.Now()
	var log []string
	for ctx.Err() == nil {
		rig.pause(300*time.Millisecond, 2*time.Second)
		if ctx.Err() != nil {
			break
		}
		what := rig.inject()
		log = append(log, fmt.Sprintf("%6.2fs %s", time.Since(start).Seconds(), what))
	}
	rig.heal()
	t.Logf("%s: %d faults in %s:\n  %s", store, len(log), dur, strings.Join(log, "\n  "))

	// the senders stop generating; their outstanding payloads get through now
	healed := time.Now()
	if sim.Wait(60 * time.Second) {
		t.Logf("%s: some payloads were still unacknowledged 60s after healing; their retries were aborted", store)
	}
	acked := time.Now()
	// drain: every acknowledged payload delivered and the backlog empty
	deadline := time.Now().Add(drainBound)
	var ov relayOverviewEntry
	var ovErr error
	var progress []string
	lastLog := time.Time{}
	for time.Now().Before(deadline) {
		ov, ovErr = faultOverview(rig.nodes[0].in, faultRelayName)
		undelivered := sim.Undelivered(rig.up)
		if undelivered == 0 && ovErr == nil && ov.Backlog == 0 {
			break
		}
		if time.Since(lastLog) >= 5*time.Second {
			lastLog = time.Now()
			progress = append(progress, fmt.Sprintf("+%.0fs backlog %d in flight %d undelivered %d", time.Since(acked).Seconds(), ov.Backlog, ov.InFlight, undelivered))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s: drain: %s", store, strings.Join(progress, "; "))
	drained := time.Now()
	ov, ovErr = faultOverview(rig.nodes[0].in, faultRelayName)
	if ovErr != nil {
		t.Errorf("%s: admin overview: %v", store, ovErr)
	}
	rep := sim.Compare(rig.up)
	statuses, _ := sim.Statuses()
	t.Logf("%s: healed -> senders done %s, -> drained %s; sender saw %s; upstream answered %v; relay requests %v deliveries %v",
		store, acked.Sub(healed).Round(time.Millisecond), drained.Sub(acked).Round(time.Millisecond),
		fmtStatuses(statuses), rig.up.Answers(), ov.Requests, ov.Deliveries)
	t.Logf("RESULT %s: acknowledged %d / delivered %d / duplicated %d / dead-lettered %d / lost %d / max delay %s   (sent %d, backlog %d, faults %v, seed %d, traffic %s)",
		store, rep.Acked, rep.Delivered, rep.Duplicated, ov.DeadLetters, rep.Lost, rep.MaxDelay.Round(time.Millisecond),
		rep.Sent, ov.Backlog, rig.done, seed, dur)

	for _, l := range rep.Slowest {
		t.Logf("%s: slow: %s acknowledged at +%.1fs (after %d sender attempts), first delivered at +%.1fs",
			store, l.ID, l.AckedAt.Sub(start).Seconds(), l.Attempts, l.Delivered.Sub(start).Seconds())
	}
	if rep.Acked == 0 {
		t.Errorf("%s: no payload was acknowledged", store)
	}
	if rep.Lost > 0 {
		t.Errorf("%s: %d acknowledged payloads never reached the upstream (e.g. %v)", store, rep.Lost, rep.LostIDs[:min(5, len(rep.LostIDs))])
	}
	if ov.Backlog != 0 {
		t.Errorf("%s: backlog %d after the drain", store, ov.Backlog)
	}
	if ov.DeadLetters != 0 {
		t.Errorf("%s: %d dead letters; no payload should die when the upstream only fails transiently", store, ov.DeadLetters)
	}
	if len(rep.BodyMismatch) > 0 {
		t.Errorf("%s: %d payloads delivered with a body other than the one sent, e.g. %v", store, len(rep.BodyMismatch), rep.BodyMismatch[0])
	}
	if p := rig.up.Problems(); len(p) > 0 {
		t.Errorf("%s: upstream found %d problems, e.g.:\n%s", store, len(p), strings.Join(p[:min(5, len(p))], "\n"))
	}
}

func fmtStatuses(m map[int]int) string {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		name := strconv.Itoa(k)
		if k == 0 {
			name = "conn-error"
		}
		parts = append(parts, fmt.Sprintf("%s:%d", name, m[k]))
	}
	return strings.Join(parts, " ")
}

// Bolt: one Caddy, kill -9, SIGTERM, reload storms, a flapping upstream.
func TestFaultsBolt(t *testing.T) {
	t.Parallel()
	seed := faultSeed(t)
	up := NewChaosUpstream(t, seed)
	up.Start()
	n := &faultNode{name: "caddy", in: NewInstance(t), site: faultSite(up, "bolt", "")}
	n.start()
	rig := &faultRig{t: t, rng: rand.New(rand.NewPCG(seed, 1)), up: up, nodes: []*faultNode{n}, done: map[string]int{}}
	runFaults(t, "bolt", seed, rig, 30*time.Second+*faultsDuration/4)
	n.p.Stop(30 * time.Second)
}

// Redis (AOF always): two Caddy instances share it; either is killed (and
// sometimes left down), stopped, reloaded; redis-server is killed and
// restarted; the upstream flaps. Entries held by a killed instance are taken
// over after the visibility timeout (20s, the least allowed), so the drain
// bound is longer.
func TestFaultsRedis(t *testing.T) {
	t.Parallel()
	seed := faultSeed(t)
	srv := redistest.Start(t, redistest.Options{AOF: true})
	up := NewChaosUpstream(t, seed)
	up.Start()
	store := fmt.Sprintf("redis %s {\n\t\t\tvisibility_timeout 20s\n\t\t}", srv.URL())
	var nodes []*faultNode
	for _, name := range []string{"caddy-a", "caddy-b"} {
		n := &faultNode{name: name, in: NewInstance(t), site: faultSite(up, store, "")}
		n.start()
		nodes = append(nodes, n)
	}
	rig := &faultRig{t: t, rng: rand.New(rand.NewPCG(seed, 1)), up: up, nodes: nodes, redis: srv, done: map[string]int{}}
	runFaults(t, "redis", seed, rig, 60*time.Second+*faultsDuration/4)
	for _, n := range nodes {
		n.p.Stop(30 * time.Second)
	}
}

// vmRSS reads a process's resident set size in KiB from /proc.
func vmRSS(pid int) (int, error) {
	m, err := harness.ReadMemory(pid)
	return m.RSS, err
}

// With the upstream down and max_backlog 50, the relay accepts exactly 50
// payloads and answers 503 with Retry-After to the rest; while the senders
// keep retrying, Caddy's memory stays flat; when the upstream comes back,
// the backlog drains and every retried payload is accepted and delivered.
func TestBackpressure(t *testing.T) {
	t.Parallel()
	const (
		capacity = 50
		total    = 400
		pad      = 16 << 10 // 16 KiB bodies
		phase    = 10 * time.Second
		maxGrow  = 50 << 10 // KiB
	)
	seed := faultSeed(t)
	up := NewChaosUpstream(t, seed) // down: not started
	in := NewInstance(t)
	p := in.Start(faultSite(up, "bolt", fmt.Sprintf("max_backlog %d", capacity)))
	pid := p.Pid()

	sim := NewSim(t, SimConfig{Seed: seed, Targets: func() []string { return []string{in.URL("/hook")} }})
	rng := rand.New(rand.NewPCG(seed, 2))
	ps := make([]*SimPayload, total)
	for i := range ps {
		ps[i] = sim.NewPayload(rng, 0, i, simUUID(rng, 999, i/4), pad)
	}
	rss0, err := vmRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sim.Send(ps)
	var samples []int
	for time.Since(start) < phase {
		time.Sleep(500 * time.Millisecond)
		kb, err := vmRSS(pid)
		if err != nil {
			t.Fatal(err)
		}
		samples = append(samples, kb)
		if n := sim.AckedCount(); n > capacity {
			t.Errorf("%s: %d payloads answered 200 with the upstream down, more than max_backlog %d", time.Since(start).Round(time.Millisecond), n, capacity)
		}
	}
	statuses, withRetryAfter := sim.Statuses()
	acked := sim.AckedCount()
	ov, err := faultOverview(in, faultRelayName)
	if err != nil {
		t.Errorf("admin overview: %v", err)
	}
	peak := rss0
	for _, kb := range samples {
		peak = max(peak, kb)
	}
	t.Logf("upstream down for %s: %d payloads of %d KiB sent, %d answered 200, backlog %d; answers %s; 503s with Retry-After %d",
		phase, total, pad>>10, acked, ov.Backlog, fmtStatuses(statuses), withRetryAfter)
	t.Logf("RESULT backpressure RSS (KiB): before traffic %d, samples every 500ms %v; peak %d, growth %d KiB (%.1f MiB)",
		rss0, samples, peak, peak-rss0, float64(peak-rss0)/1024)
	if acked != capacity || statuses[http.StatusOK] != capacity {
		t.Errorf("%d payloads (%d answers) were 200 with the upstream down, want exactly max_backlog %d", acked, statuses[http.StatusOK], capacity)
	}
	if statuses[http.StatusServiceUnavailable] == 0 {
		t.Errorf("no 503 beyond max_backlog")
	}
	if withRetryAfter != statuses[http.StatusServiceUnavailable] {
		t.Errorf("%d of %d 503s without Retry-After", statuses[http.StatusServiceUnavailable]-withRetryAfter, statuses[http.StatusServiceUnavailable])
	}
	if ov.Backlog != capacity {
		t.Errorf("admin backlog %d with the upstream down, want %d", ov.Backlog, capacity)
	}
	if peak-rss0 > maxGrow {
		t.Errorf("Caddy's RSS grew by %d KiB while the senders retried, want under %d KiB", peak-rss0, maxGrow)
	}

	up.Start()
	healed := time.Now()
	if sim.Wait(90 * time.Second) {
		t.Errorf("not every payload was accepted within 90s of the upstream coming back: %d of %d", sim.AckedCount(), total)
	}
	accepted := time.Since(healed)
	deadline := time.Now().Add(30 * time.Second)
	for sim.Undelivered(up) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	rep := sim.Compare(up)
	ov, _ = faultOverview(in, faultRelayName)
	t.Logf("RESULT backpressure: upstream back -> all %d accepted in %s, delivered after %s; acknowledged %d / delivered %d / duplicated %d / dead-lettered %d / lost %d / max delay %s",
		total, accepted.Round(time.Millisecond), time.Since(healed).Round(time.Millisecond),
		rep.Acked, rep.Delivered, rep.Duplicated, ov.DeadLetters, rep.Lost, rep.MaxDelay.Round(time.Millisecond))
	if rep.Acked != total || rep.Lost != 0 || rep.Delivered != total {
		t.Errorf("after the upstream came back: %s", rep)
	}
	// the upstream has the last payload a moment before the relay has
	// taken it off the queue
	for wait := time.Now().Add(10 * time.Second); ov.Backlog != 0 && time.Now().Before(wait); {
		time.Sleep(50 * time.Millisecond)
		ov, _ = faultOverview(in, faultRelayName)
	}
	if ov.Backlog != 0 {
		t.Errorf("backlog %d 10s after the drain", ov.Backlog)
	}
	p.Stop(30 * time.Second)
}
