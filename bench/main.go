// Command bench measures webhook_relay inside a real Caddy against plain
// Caddy baselines, and checks that every acknowledged payload is delivered.
//
//	go run ./bench [-duration 10s] [-connections 8,32,64,128] [-rounds 3] [-targets respond,memory,...]
//	go run ./bench -body-size 6MiB   # large bodies: also Caddy's peak RSS per target
//	go run ./bench -before /tmp/caddy-old  # each relay also on an earlier build, in the same rounds
//	go run ./bench -filter 'has(body.data)'  # each relay also with a destination filter
//	go run ./bench -fanout                   # each relay also with three destinations, two filtered
//
// It builds ./cmd/caddy, starts a counting upstream in-process, a private
// redis-server, and a Caddy config with one site per target (a fresh Caddy
// process for every measurement), then drives closed-loop POST load at each
// target in turn, at each connection count, round after round, all on
// 127.0.0.1. docs/performance.md explains the figures and shows a run.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/hookrelay/caddy-webhook-relay/dedupe"
	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
)

const secret = "bench-secret"

// target is one site in the Caddyfile and one row of the table.
type target struct {
	name     string
	group    string // burst | sustained
	baseline string // the group's baseline target
	store    string // the relay's store; "" when the target is no relay
	live     bool   // the relay delivers to the counting upstream
	setup    string // for the table
	bin      string // the Caddy binary it runs on; "" for the one built from this tree
	filter   string // the destination's filter (CEL); "" for none
	fanout   bool   // three destinations, two of them with a filter that takes every payload

	port  int
	at    []*series // one per connection count, in the order of counts
	acked []uint64  // payload ids answered 200, over all rounds and counts
}

// series is what one target measured at one connection count: one entry
// per round.
type series struct {
	runs   []result
	rates  []float64 // what the ratio compares; see target.rate
	ratios []float64 // rate over the baseline's, same round and count
	drains []time.Duration
	cpu    []cpuCost
	rss    []int // Caddy's peak RSS (VmHWM, KiB), load and drain included
	own    []int // the same without mapped files (RssAnon+RssShmem, sampled), KiB
}

// rate is what a run is compared on. Burst: acknowledgements per second
// (with large bodies 200s per second: a 503 at max_memory is quick and
// acknowledges nothing). Sustained: payloads acknowledged and delivered
// per second, the live relay's drain included.
func (t *target) rate(res result, drain time.Duration, large bool) float64 {
	if t.group == "burst" {
		if large {
			return res.okps()
		}
		return res.rps()
	}
	// Large bodies can be refused (503 at max_memory): count only what
	// was acknowledged as delivered. Small: every answer is 200.
	done := res.total
	if large {
		done = len(res.acked)
	}
	return float64(done) / (res.elapsed + drain).Seconds()
}

// cpuCost is the CPU time Caddy and redis-server spent per request in one
// run, delivery of a live relay's payloads included.
type cpuCost struct{ caddy, redis time.Duration }

func targets() []*target {
	return []*target{
		{name: "respond", group: "burst", setup: "`respond 200`"},
		{name: "memory", group: "burst", baseline: "respond", store: "memory", setup: "relay, store memory, upstream down"},
		{name: "bolt", group: "burst", baseline: "respond", store: "bolt", setup: "relay, store bolt, upstream down"},
		{name: "redis", group: "burst", baseline: "respond", store: "redis", setup: "relay, store redis, upstream down"},
		{name: "proxy", group: "sustained", setup: "`reverse_proxy` to the upstream"},
		{name: "memory-live", group: "sustained", baseline: "proxy", store: "memory", live: true, setup: "relay, store memory, delivering"},
		{name: "bolt-live", group: "sustained", baseline: "proxy", store: "bolt", live: true, setup: "relay, store bolt, delivering"},
		{name: "redis-live", group: "sustained", baseline: "proxy", store: "redis", live: true, setup: "relay, store redis, delivering"},
	}
}

// env is what the site blocks point at.
type env struct {
	dir       string
	upstream  string // host:port of the counting upstream
	deadPort  int    // nothing listens here
	redisAddr string // host:port of the private redis-server
	// deliveryConcurrency is the live relays' concurrency setting
	deliveryConcurrency int
	// large: -body-size was given
	large bool
}

func (t *target) url() string {
	return fmt.Sprintf("http://127.0.0.1:%d/hooks/%s?token=%s", t.port, t.name, secret)
}

// upPath is where a live relay's deliveries land at the counting upstream.
func (t *target) upPath() string { return "/" + t.name }

func (t *target) site(e env) string {
	var b strings.Builder
	fmt.Fprintf(&b, ":%d {\n\tbind 127.0.0.1\n", t.port)
	switch {
	case t.name == "respond":
		b.WriteString("\trespond 200\n")
	case t.name == "proxy":
		fmt.Fprintf(&b, "\treverse_proxy %s\n", e.upstream)
	default:
		up := fmt.Sprintf("http://127.0.0.1:%d%s", e.deadPort, t.upPath())
		if t.live {
			up = "http://" + e.upstream + t.upPath()
		}
		switch {
		case t.fanout:
			// every payload to all three: the app, and two filtered ones
			fmt.Fprintf(&b, "\twebhook_relay {\n\t\tdestination upstream %s\n", up)
			fmt.Fprintf(&b, "\t\tdestination archive %s-archive {\n\t\t\tfilter `%s`\n\t\t}\n", up, fanoutFilters[0])
			fmt.Fprintf(&b, "\t\tdestination analytics %s-analytics {\n\t\t\tfilter `%s`\n\t\t}\n", up, fanoutFilters[1])
		case t.filter == "":
			fmt.Fprintf(&b, "\twebhook_relay %s {\n", up)
		default:
			fmt.Fprintf(&b, "\twebhook_relay {\n\t\tdestination upstream %s {\n\t\t\tfilter `%s`\n\t\t}\n", up, t.filter)
		}
		fmt.Fprintf(&b, "\t\tname %s\n\t\tauth_query token %s\n", t.name, secret)
		switch t.store {
		case "memory":
			b.WriteString("\t\tstore memory\n")
		case "bolt":
			fmt.Fprintf(&b, "\t\tstore bolt %s\n", filepath.Join(e.dir, t.name+".db"))
		case "redis":
			fmt.Fprintf(&b, "\t\tstore redis redis://%s\n", e.redisAddr)
		}
		if !t.live {
			b.WriteString("\t\tmax_backlog 10000000\n") // a burst must never 503 (large bodies: see -burst-budget)
		}
		if t.live {
			fmt.Fprintf(&b, "\t\tconcurrency %d\n", e.deliveryConcurrency)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// fanoutFilters are the -fanout targets' two filters: both take every
// payload the load sends (Runware image results), so each is fanned out to
// all three destinations.
var fanoutFilters = [2]string{
	`has(body.data) && body.data.exists(d, d.taskType == "imageInference")`,
	`has(body.data) && body.data.all(d, d.cost < 1.0)`,
}

func main() { os.Exit(run()) }

func run() int {
	duration := flag.Duration("duration", 10*time.Second, "measured load time per target, connection count and round")
	warmup := flag.Duration("warmup", time.Second, "unmeasured load before each measurement")
	connsFlag := flag.String("connections", "8,32,64,128", "keep-alive connections (closed-loop workers): a count, or counts separated by commas, each measured in every round; with -body-size the default is 64")
	deliveryConc := flag.Int("delivery-concurrency", 0, "the live relays' concurrency (parallel deliveries); default: as many as the connections of each run, the parallelism reverse_proxy gets from the load")
	rounds := flag.Int("rounds", 3, "rounds; each round runs every target once at each connection count, in turn")
	names := flag.String("targets", "respond,memory,bolt,redis,proxy,bolt-live,redis-live", "targets to run, comma separated (memory-live is also available)")
	drainTimeout := flag.Duration("drain-timeout", 60*time.Second, "how long to wait for a live relay to deliver everything")
	redisAOF := flag.Bool("redis-aof", true, "run Redis with appendonly yes, appendfsync everysec, as docs/redis.md recommends (false: no persistence)")
	profile := flag.Bool("pprof", false, "CPU-profile Caddy through its admin endpoint during round 1 of each target (keeps the temp dir)")
	bodySizeFlag := flag.String("body-size", "", "large bodies: make every body about this size (bytes, or e.g. 6MiB) with a Runware-like imageBase64Data field, and report Caddy's peak RSS per target; default: ~300-byte bodies")
	budgetFlag := flag.String("burst-budget", "4GiB", "large bodies: a burst target (upstream down, so it keeps everything) stops taking load once this much was acknowledged; its store is emptied before each run")
	beforeBin := flag.String("before", "", "a Caddy binary built from an earlier version (git worktree add /tmp/old <rev> && cd /tmp/old && go build -o /tmp/caddy-old ./cmd/caddy): every relay target also runs on it, as <target>-before right after the target, against the same baseline run, so before and after compare within each round")
	fanout := flag.Bool("fanout", false, "every relay target also runs with three destinations, two of them with a filter that takes every payload, as <target>-fanout right after the target (not on -before's build), against the same baseline run")
	filterExpr := flag.String("filter", "", "a CEL filter (without backticks) that takes every payload, e.g. 'has(body.data)': every relay target also runs with it on its destination, as <target>-filter right after the target (and its -before), against the same baseline run")
	flag.Parse()
	if strings.Contains(*filterExpr, "`") {
		fmt.Fprintln(os.Stderr, "-filter: give the expression without backticks")
		return 2
	}
	if *duration <= 0 || *rounds <= 0 {
		fmt.Fprintln(os.Stderr, "-duration and -rounds must be positive")
		return 2
	}
	var bodySize, burstBudget uint64
	if *bodySizeFlag != "" {
		var err error
		if bodySize, err = humanize.ParseBytes(*bodySizeFlag); err != nil || bodySize == 0 {
			fmt.Fprintf(os.Stderr, "-body-size %q: want a size in bytes, or e.g. 6MiB\n", *bodySizeFlag)
			return 2
		}
		if burstBudget, err = humanize.ParseBytes(*budgetFlag); err != nil || burstBudget == 0 {
			fmt.Fprintf(os.Stderr, "-burst-budget %q: want a size, e.g. 4GiB\n", *budgetFlag)
			return 2
		}
	}
	large := bodySize > 0
	if large && !flagSet("targets") {
		// The memory store keeps every acknowledged body in Caddy's heap:
		// with large bodies a burst is gigabytes. Name it to run it.
		*names = "respond,bolt,redis,proxy,bolt-live,redis-live"
	}
	if large && !flagSet("connections") {
		// Large bodies keep the single count they always had: 128
		// connections of them is another experiment (memory in flight),
		// and four counts take four times as long. Name a list to run one.
		*connsFlag = "64"
	}
	if *beforeBin != "" {
		if err := exec.Command(*beforeBin, "version").Run(); err != nil {
			fmt.Fprintf(os.Stderr, "-before %q: not a Caddy binary that runs here (%v); build one at the earlier commit with go build -o <path> ./cmd/caddy\n", *beforeBin, err)
			return 2
		}
	}
	counts, err := parseCounts(*connsFlag)
	if err != nil {
		fmt.Fprintf(os.Stderr, "-connections %q: %v\n", *connsFlag, err)
		return 2
	}

	all := targets()
	chosen := map[string]bool{}
	for n := range strings.SplitSeq(*names, ",") {
		n = strings.TrimSpace(n)
		if !slices.ContainsFunc(all, func(t *target) bool { return t.name == n }) {
			fmt.Fprintf(os.Stderr, "unknown target %q; known: respond,memory,bolt,redis,proxy,memory-live,bolt-live,redis-live\n", n)
			return 2
		}
		chosen[n] = true
	}
	var active []*target // in the table's order, whatever the flag's
	byName := map[string]*target{}
	for _, t := range all {
		if !chosen[t.name] {
			continue
		}
		variants := []*target{t}
		if *beforeBin != "" && t.store != "" {
			old := *t
			old.name, old.bin, old.setup = t.name+"-before", *beforeBin, t.setup+", earlier build"
			variants = append(variants, &old)
		}
		if *fanout && t.store != "" {
			for _, v := range slices.Clone(variants) {
				if v.bin != "" {
					continue // an earlier build may not fan out
				}
				f := *v
				f.name = t.name + "-fanout"
				f.fanout, f.setup = true, v.setup+", 3 destinations, 2 filters"
				variants = append(variants, &f)
			}
		}
		if *filterExpr != "" && t.store != "" {
			for _, v := range slices.Clone(variants) {
				f := *v
				f.name = strings.Replace(v.name, t.name, t.name+"-filter", 1) // memory-filter-before
				f.filter, f.setup = *filterExpr, v.setup+", filter"
				variants = append(variants, &f)
			}
		}
		for _, v := range variants {
			active = append(active, v)
			byName[v.name] = v
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "webhook-relay-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if !*profile {
		defer os.RemoveAll(dir)
	}
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
		return 2
	}

	fmt.Fprintln(os.Stderr, "building ./cmd/caddy ...")
	bin, err := harness.BuildCaddy(dir)
	if err != nil {
		return fail("%v", err)
	}
	fmt.Printf("machine: %d CPUs, %s, %s, %s/%s\n", runtime.NumCPU(), cpuModel(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("caddy: %s\n", commandOutput(bin, "version"))
	if *beforeBin != "" {
		fmt.Printf("caddy for the -before targets: %s (%s)\n", *beforeBin, commandOutput(*beforeBin, "version"))
	}

	up, err := startUpstream()
	if err != nil {
		return fail("upstream: %v", err)
	}
	defer up.close()

	// The live relays' concurrency at n connections.
	deliveryAt := func(n int) int {
		if *deliveryConc > 0 {
			return *deliveryConc
		}
		return n
	}
	// (deliveryConcurrency is set again for each count's Caddyfile.)
	e := env{dir: dir, upstream: up.addr, deliveryConcurrency: deliveryAt(counts[0]), large: large}
	if e.deadPort, err = harness.FreePort(); err != nil {
		return fail("%v", err)
	}
	redisPid := 0 // the private redis-server's, for its CPU time and memory
	if slices.ContainsFunc(active, func(t *target) bool { return t.store == "redis" }) {
		srv, err := startRedis(dir, *redisAOF)
		if err != nil {
			return fail("%v", err)
		}
		defer srv.Kill()
		e.redisAddr, redisPid = srv.Addr(), srv.Pid()
		fmt.Printf("redis: %s (appendonly %v)\n", commandOutput("redis-server", "--version"), *redisAOF)
	}
	adminPort, err := harness.FreePort()
	if err != nil {
		return fail("%v", err)
	}
	// Caddy's home is the run's temporary directory: its data and config
	// directories stay inside it.
	c := &harness.Caddy{Bin: bin, Home: dir, AdminPort: adminPort, GracePeriod: 5 * time.Second}

	// Check each site on its own, so a store that is not built yet skips
	// its targets instead of failing the run.
	var ports []int
	ok := active[:0:0]
	for _, t := range active {
		if t.port, err = harness.FreePort(); err != nil {
			return fail("%v", err)
		}
		cf := c.Config(t.site(e))
		path := filepath.Join(dir, "check-"+t.name+".Caddyfile")
		if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
			return fail("%v", err)
		}
		if err := validateCaddyfile(on(c, t.bin), path); err != nil {
			if t.store == "" {
				return fail("target %s does not validate: %v", t.name, err)
			}
			fmt.Printf("SKIPPING %s: `store %s` does not work in this build yet: %v\n", t.name, t.store, err)
			continue
		}
		ok = append(ok, t)
		ports = append(ports, t.port)
		t.at = make([]*series, len(counts))
		for i := range counts {
			t.at[i] = &series{}
		}
	}
	active = ok
	if len(active) == 0 {
		return fail("no target left to run")
	}
	// One Caddyfile per connection count and build, with the sites of that
	// build's targets only: a build never opens another build's stores,
	// whose formats may differ; the live relays' concurrency follows the
	// count unless -delivery-concurrency fixes it.
	caddyfiles := make([]map[string]string, len(counts)) // by build (target.bin)
	for i, n := range counts {
		e.deliveryConcurrency = deliveryAt(n)
		sites := map[string]*strings.Builder{}
		for _, t := range active {
			if sites[t.bin] == nil {
				sites[t.bin] = &strings.Builder{}
			}
			sites[t.bin].WriteString(t.site(e) + "\n")
		}
		caddyfiles[i] = map[string]string{}
		for bin, b := range sites {
			name := fmt.Sprintf("Caddyfile-%d", n)
			if bin != "" {
				name += "-before"
			}
			caddyfiles[i][bin] = filepath.Join(dir, name)
			if err := os.WriteFile(caddyfiles[i][bin], []byte(c.Config(b.String())), 0o644); err != nil {
				return fail("%v", err)
			}
		}
	}
	// A fresh Caddy process for every measurement: what one target leaves
	// behind (the memory store's heap, a backlog being retried) must not
	// cost the next target CPU. bolt and redis queues survive the restarts,
	// so the delivery check at the end sees them all.
	var caddy *harness.Proc
	restart := func(ci int, t *target) error {
		stopCaddy(caddy, 20*time.Second)
		if large {
			// What a burst target stored is never delivered (its upstream
			// is down); with large bodies it is gigabytes. Start empty.
			if err := emptyBurstStores(active, e); err != nil {
				return err
			}
		}
		var buildPorts []int
		for _, o := range active {
			if o.bin == t.bin {
				buildPorts = append(buildPorts, o.port)
			}
		}
		var err error
		caddy, err = startCaddy(on(c, t.bin), caddyfiles[ci][t.bin], buildPorts)
		return err
	}
	defer func() { stopCaddy(caddy, 20*time.Second) }()

	gen := &payloads{run: rand.Uint32()}
	countList := joinInts(counts)
	if large {
		gen.setSize(int(bodySize))
		fmt.Printf("load: %s keep-alive connections, closed loop, %s warm-up + %s measured per target per count per round, %d rounds, %d-byte bodies (%s, imageBase64Data)\n",
			countList, *warmup, *duration, *rounds, gen.bodyLen(1), humanize.IBytes(uint64(gen.bodyLen(1))))
		fmt.Printf("burst targets: at most %s acknowledged per run (%d payloads), store emptied before each run\n",
			humanize.IBytes(burstBudget), burstBudget/uint64(gen.bodyLen(1)))
	} else {
		fmt.Printf("load: %s keep-alive connections, closed loop, %s warm-up + %s measured per target per count per round, %d rounds, ~%d-byte bodies\n",
			countList, *warmup, *duration, *rounds, len((&payloads{}).body(1)))
	}
	if *deliveryConc > 0 {
		fmt.Printf("live relays: concurrency %d\n\n", *deliveryConc)
	} else {
		fmt.Printf("live relays: concurrency as many as the connections (%s)\n\n", countList)
	}

	// Within a round, every target runs at one count before the next
	// count: a target and its baseline run minutes apart at most.
	for r := range *rounds {
		for ci, n := range counts {
			for _, t := range active {
				if ctx.Err() != nil {
					return fail("interrupted")
				}
				if err := restart(ci, t); err != nil {
					return fail("%v", err)
				}
				s := t.at[ci]
				var profDone chan struct{}
				if *profile && r == 0 {
					profDone = make(chan struct{})
					go func() {
						defer close(profDone)
						saveProfile(ctx, adminPort, *warmup, *duration, filepath.Join(dir, "pprof", fmt.Sprintf("%s-%d.pprof", t.name, n)))
					}()
				}
				caddy0, redis0 := harness.CPUTime(caddy.Pid()), harness.CPUTime(redisPid)
				var maxAcked int64
				var ownPeak func() int
				if large {
					if !t.live && t.store != "" {
						maxAcked = max(1, int64(burstBudget/uint64(gen.bodyLen(1))))
					}
					ownPeak = sampleOwn(caddy.Pid(), 50*time.Millisecond)
				}
				res := runLoad(ctx, t.url(), n, *warmup, *duration, gen, maxAcked)
				if profDone != nil {
					<-profDone
				}
				s.runs = append(s.runs, res)
				line := fmt.Sprintf("round %d/%d %3d conns  %-20s %8.0f req/s  p50 %s  p99 %s  non-200 %d  errors %d",
					r+1, *rounds, n, t.name, res.rps(), ms(res.pct(0.50)), ms(res.pct(0.99)), res.non200, res.errors)
				var drain time.Duration
				if t.live {
					// Let the relay catch up before the next target runs, so
					// its deliveries do not eat the next target's CPU.
					t.acked = append(t.acked, res.acked...)
					drain = waitDistinct(ctx, up, t.upPath(), len(t.acked), *drainTimeout)
					s.drains = append(s.drains, drain)
					line += fmt.Sprintf("  drained in %.1fs", drain.Seconds())
				}
				rate := t.rate(res, drain, large)
				s.rates = append(s.rates, rate)
				// The baseline ran earlier in this round at this count
				// (active is in the table's order): compare with that run
				// only, never across rounds.
				if b := byName[t.baseline]; b != nil && len(b.at[ci].rates) == r+1 && b.at[ci].rates[r] > 0 {
					ratio := rate / b.at[ci].rates[r]
					s.ratios = append(s.ratios, ratio)
					line += fmt.Sprintf("  vs %s %.2f", t.baseline, ratio)
				}
				if res.total > 0 {
					cost := cpuCost{(harness.CPUTime(caddy.Pid()) - caddy0) / time.Duration(res.total), (harness.CPUTime(redisPid) - redis0) / time.Duration(res.total)}
					s.cpu = append(s.cpu, cost)
					line += "  CPU/req " + cost.String(t.store == "redis")
				}
				if large {
					rss, own := memory(caddy.Pid()).HWM, ownPeak()
					s.rss = append(s.rss, rss)
					s.own = append(s.own, own)
					line += fmt.Sprintf("  200/s %.0f  RSS peak %s (own %s)", res.okps(), mib(rss), mib(own))
					if t.store == "redis" {
						line += fmt.Sprintf(" (redis-server now %s)", mib(memory(redisPid).RSS))
					}
					if len(res.codes) > 0 {
						line += "  non-200 by status (whole run): " + fmtCodes(res.codes)
					}
					if res.budget {
						line += fmt.Sprintf("  [stopped at the burst budget after %.1fs]", res.window.Seconds())
					}
				}
				fmt.Println(line)
			}
		}
	}

	printTable(active, counts, large)
	// the delivery check needs a running relay: this tree's build, whose
	// live targets may still hold a backlog (the -before ones drained
	// after each of their runs, or the check reports what they lost)
	if err := restart(0, &target{}); err != nil {
		return fail("%v", err)
	}
	if *profile {
		fmt.Printf("\nCPU profiles (round 1): %s\n  go tool pprof -top %s %s\n", filepath.Join(dir, "pprof"), bin, filepath.Join(dir, "pprof", "<target>-<connections>.pprof"))
	}
	return checkDelivery(ctx, active, up, gen, *drainTimeout)
}

// printTable prints one row per target and connection count: a target's
// rows follow each other, so its ratio and CPU/req read as a curve.
func printTable(active []*target, counts []int, large bool) {
	fmt.Println()
	if large {
		fmt.Println("| target | conns | setup | req/s | 200/s | p50 | p99 | delivered/s | vs baseline | CPU/req | RSS peak | own peak | non-200 | drain |")
		fmt.Println("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	} else {
		fmt.Println("| target | conns | setup | req/s | p50 | p99 | delivered/s | vs baseline | CPU/req | non-200 | drain |")
		fmt.Println("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|")
	}
	for _, t := range active {
		for ci, n := range counts {
			s := t.at[ci]
			setup := t.setup
			if ci > 0 {
				setup = "" // said on the target's first row
			}
			delivered := ""
			if t.group == "sustained" {
				delivered = fmt.Sprintf("%.0f", medianOf(s.rates))
			}
			ratio := "baseline"
			if t.baseline != "" {
				ratio = "-" // its baseline did not run
				if len(s.ratios) > 0 {
					ratio = fmt.Sprintf("%.2f", medianOf(s.ratios))
				}
			}
			non200 := 0
			for _, r := range s.runs {
				non200 += r.non200 + r.errors
			}
			drain := ""
			if t.live {
				ds := make([]float64, len(s.drains))
				for i, d := range s.drains {
					ds[i] = d.Seconds()
				}
				drain = fmt.Sprintf("%.1f s", medianOf(ds))
			}
			var cpu cpuCost
			if len(s.cpu) > 0 {
				slices.SortFunc(s.cpu, func(a, b cpuCost) int { return int(a.caddy + a.redis - b.caddy - b.redis) })
				cpu = s.cpu[len(s.cpu)/2]
			}
			rps := median(s.runs, result.rps)
			p50 := ms(time.Duration(median(s.runs, func(r result) float64 { return float64(r.pct(0.50)) })))
			p99 := ms(time.Duration(median(s.runs, func(r result) float64 { return float64(r.pct(0.99)) })))
			if large {
				fmt.Printf("| %s | %d | %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", t.name, n, setup, rps,
					median(s.runs, result.okps), p50, p99,
					delivered, ratio, cpu.String(t.store == "redis"), mib(slices.Max(s.rss)), mib(slices.Max(s.own)), non200, drain)
				continue
			}
			fmt.Printf("| %s | %d | %s | %.0f | %s | %s | %s | %s | %s | %d | %s |\n", t.name, n, setup, rps,
				p50, p99, delivered, ratio, cpu.String(t.store == "redis"), non200, drain)
		}
	}
	fmt.Println("\nvs baseline: the median over the rounds of the ratio to the baseline's run in the same round at the same connection count.")
	if large {
		fmt.Println("RSS peak: Caddy's VmHWM, highest over the rounds (each run is a fresh Caddy process; a live relay's drain included).")
		fmt.Println("own peak: the same without mapped files (RssAnon+RssShmem, sampled every 50 ms); on bolt VmRSS also counts the database file's pages that bbolt's mmap touched.")
	}
}

// checkDelivery waits until every payload a live relay acknowledged reached
// the upstream, then reports; 1 if any is missing.
func checkDelivery(ctx context.Context, active []*target, up *upstream, gen *payloads, timeout time.Duration) int {
	keyer, err := dedupe.NewKeyer([]string{"runware"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	code := 0
	header := false
	for _, t := range active {
		if !t.live {
			continue
		}
		if !header {
			fmt.Println("\ndelivery (sustained relays):")
			fmt.Println("| target | acknowledged | delivered | duplicates | missing | unexpected |")
			fmt.Println("|---|--:|--:|--:|--:|--:|")
			header = true
		}
		want := make(map[string]bool, len(t.acked))
		for _, id := range t.acked {
			k, err := keyer.Key(nil, nil, gen.body(id))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			want[k] = true
		}
		var got map[string]int
		deadline := time.Now().Add(timeout)
		for {
			got = up.counts(t.upPath())
			if allIn(want, got) || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		delivered, dups, unexpected := 0, 0, 0
		for k := range want {
			if got[k] > 0 {
				delivered++
			}
		}
		for k, n := range got {
			if n > 1 {
				dups++
			}
			if !want[k] {
				unexpected++ // delivered without a 200 seen by the client, e.g. a client timeout
			}
		}
		missing := len(want) - delivered
		if missing > 0 {
			code = 1
		}
		fmt.Printf("| %s | %d | %d | %d | %d | %d |\n", t.name, len(want), delivered, dups, missing, unexpected)
	}
	if code != 0 {
		fmt.Println("\nFAIL: acknowledged payloads never reached the upstream")
	}
	return code
}

func allIn(want map[string]bool, got map[string]int) bool {
	if len(got) < len(want) {
		return false
	}
	for k := range want {
		if got[k] == 0 {
			return false
		}
	}
	return true
}

// waitDistinct waits until n distinct keys reached path, at most timeout,
// and returns how long that took.
func waitDistinct(ctx context.Context, up *upstream, path string, n int, timeout time.Duration) time.Duration {
	start := time.Now()
	for up.distinct(path) < n && time.Since(start) < timeout && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// saveProfile fetches a CPU profile of Caddy covering the measured window.
func saveProfile(ctx context.Context, adminPort int, warmup, window time.Duration, path string) {
	select {
	case <-time.After(warmup):
	case <-ctx.Done():
		return
	}
	secs := max(1, int(window/time.Second))
	url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", adminPort, secs)
	client := &http.Client{Timeout: time.Duration(secs)*time.Second + 15*time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pprof: %v\n", err)
		return
	}
	defer resp.Body.Close()
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pprof: %v\n", err)
		return
	}
	defer f.Close()
	_, _ = io.Copy(f, resp.Body)
}

// parseCounts reads -connections: positive counts separated by commas,
// returned in ascending order (the table's), each once.
func parseCounts(s string) ([]int, error) {
	var counts []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("want positive counts separated by commas, e.g. 8,32,64")
		}
		counts = append(counts, n)
	}
	slices.Sort(counts)
	return slices.Compact(counts), nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

func median(runs []result, f func(result) float64) float64 {
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	return medianOf(v)
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

func (c cpuCost) String(withRedis bool) string {
	s := fmt.Sprintf("%.0f µs", float64(c.caddy)/float64(time.Microsecond))
	if withRedis {
		s += fmt.Sprintf(" + %.0f µs redis", float64(c.redis)/float64(time.Microsecond))
	}
	return s
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func fmtCodes(m map[int]int) string {
	codes := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%d:%d", c, m[c])
	}
	return strings.Join(parts, " ")
}

// mib formats KiB as MiB.
func mib(kib int) string { return fmt.Sprintf("%.0f MiB", float64(kib)/1024) }

// flagSet reports whether the named flag was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
