package processtest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// The Redis topologies for real: two Caddy instances behind a load
// balancer (the senders pick one at random per attempt), Runware-like
// senders retrying every non-2xx, and the Redis master killed with kill -9
// in the middle of the traffic. Every payload acknowledged must reach the
// upstream. The RESULT lines are the figures docs/redis.md quotes
// ("Failover, measured").

// topologySite is a relay on the given store block.
func topologySite(up *ChaosUpstream, store string) string {
	return faultSite(up, store, "")
}

// topologyRun sends traffic to the instances for dur, calls fault after
// faultAt, then waits for every acknowledged payload to be delivered and
// reports. afterFault, when set, returns when the topology has recovered
// (a new master), and that moment is reported.
func topologyRun(t *testing.T, name string, up *ChaosUpstream, nodes []*Instance, dur, faultAt time.Duration,
	fault func(), recovered func() time.Time) {
	topologyRunMayLose(t, name, up, nodes, dur, faultAt, fault, recovered, false)
}

// topologyRunMayLose is topologyRun; with mayLose, acknowledged payloads
// that never arrive are reported, not failed: what a topology without
// wait_replicas loses in a failover is measured, not promised.
func topologyRunMayLose(t *testing.T, name string, up *ChaosUpstream, nodes []*Instance, dur, faultAt time.Duration,
	fault func(), recovered func() time.Time, mayLose bool) {
	targets := make([]string, len(nodes))
	for i, n := range nodes {
		targets[i] = n.URL("/hook")
	}
	sim := NewSim(t, SimConfig{
		Seed:           42,
		Senders:        4,
		Gap:            40 * time.Millisecond,
		MaxOutstanding: 32,
		BatchMax:       3,
		Targets:        func() []string { return targets },
	})
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	start := time.Now()
	sim.Run(ctx)
	select {
	case <-time.After(faultAt):
	case <-ctx.Done():
	}
	killed := time.Now()
	fault()
	var promoted time.Time
	if recovered != nil {
		promoted = recovered()
	}
	<-ctx.Done()
	if sim.Wait(60 * time.Second) {
		t.Logf("%s: some payloads were still unacknowledged 60s after the traffic stopped; their retries were aborted", name)
	}
	deadline := time.Now().Add(60 * time.Second)
	for sim.Undelivered(up) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	rep := sim.Compare(up)
	statuses, _ := sim.Statuses()
	var afterPromotion time.Duration
	dels := up.Deliveries()
	for _, rec := range sim.Records() {
		if d, ok := dels[rec.P.ID]; ok && rec.Acked && !promoted.IsZero() && rec.AckedAt.After(promoted) {
			afterPromotion = max(afterPromotion, d.first.Sub(rec.AckedAt))
		}
	}
	promotion := "n/a"
	if !promoted.IsZero() {
		promotion = promoted.Sub(killed).Round(time.Millisecond).String()
	}
	t.Logf("%s: master killed at +%s; new master after %s; sender saw %s; upstream answered %v",
		name, killed.Sub(start).Round(time.Millisecond), promotion, fmtStatuses(statuses), up.Answers())
	t.Logf("RESULT %s: acknowledged %d / delivered %d / duplicated %d / lost %d / max delay %s / max delay of payloads acknowledged after the promotion %s (sent %d)",
		name, rep.Acked, rep.Delivered, rep.Duplicated, rep.Lost, rep.MaxDelay.Round(time.Millisecond),
		afterPromotion.Round(time.Millisecond), rep.Sent)
	if rep.Acked == 0 {
		t.Errorf("%s: nothing was acknowledged", name)
	}
	if rep.Lost > 0 && !mayLose {
		t.Errorf("%s: %d acknowledged payloads never reached the upstream (e.g. %v)", name, rep.Lost, rep.LostIDs[:min(5, len(rep.LostIDs))])
	}
	if len(rep.BodyMismatch) > 0 {
		t.Errorf("%s: %d payloads delivered with another body, e.g. %s", name, len(rep.BodyMismatch), rep.BodyMismatch[0])
	}
	if p := up.Problems(); len(p) > 0 {
		t.Errorf("%s: upstream problems: %v", name, p[:min(5, len(p))])
	}
}

// A master, a replica and three sentinels; the instances find the master
// through the sentinels and wait for the replica (wait_replicas 1) before
// each 200. The master is killed with kill -9; the sentinels promote the
// replica, and the old master, restarted, becomes its replica; then the new
// master is killed too and the first one promoted again. Nothing
// acknowledged is lost across the two failovers.
func TestRedisSentinelFailover(t *testing.T) { sentinelFailover(t, true) }

// TestRedisSentinelFailoverWithoutWaitReplicas: the same without
// wait_replicas, to measure the loss window docs/redis.md states: a
// payload acknowledged by the master and not yet replicated may die with
// it.
func TestRedisSentinelFailoverWithoutWaitReplicas(t *testing.T) { sentinelFailover(t, false) }

// allNameMaster reports whether every sentinel names addr as the master.
// Restarting the old master before they all agree lets one that has not
// caught up turn the promoted replica back into its replica.
func allNameMaster(sentinels []*redistest.Server, addr string) bool {
	for _, s := range sentinels {
		if got, err := s.MasterAddr(); err != nil || got != addr {
			return false
		}
	}
	return true
}

func sentinelFailover(t *testing.T, waitReplicas bool) {
	const master = "relaymaster"
	m := redistest.Start(t, redistest.Options{AOF: true, Appendfsync: "everysec"})
	r := redistest.Start(t, redistest.Options{AOF: true, Appendfsync: "everysec", ReplicaOf: m})
	if err := r.WaitSynced(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	var sentinels []*redistest.Server
	for range 3 {
		sentinels = append(sentinels, redistest.StartSentinel(t, master, m, 2))
	}
	// the sentinels know each other and the replica before the fault
	testkit.Eventually(t, 30*time.Second, func() bool {
		for _, s := range sentinels {
			out, err := redistest.Cmd(s.Addr(), "SENTINEL", "CKQUORUM", master)
			if err != nil || !strings.Contains(out, "3 usable") {
				return false
			}
			out, err = redistest.Cmd(s.Addr(), "SENTINEL", "REPLICAS", master)
			if err != nil || !strings.Contains(out, r.Addr()[strings.LastIndex(r.Addr(), ":")+1:]) {
				return false
			}
		}
		return true
	}, "%s", testkit.Lazy(func() string {
		out, err := redistest.Cmd(sentinels[0].Addr(), "SENTINEL", "CKQUORUM", master)
		return fmt.Sprintf("sentinels not ready: %s %v", out, err)
	}))

	up := NewChaosUpstream(t, 7)
	up.Start()
	wait, name := "wait_replicas   1", "sentinel"
	if !waitReplicas {
		wait, name = "", "sentinel without wait_replicas"
	}
	store := fmt.Sprintf(`redis redis://%s/0 {
			sentinel_master %s
			addresses       %s %s
			%s
			dial_timeout    500ms
			read_timeout    2s
			write_timeout   500ms
		}`, sentinels[0].Addr(), master, sentinels[1].Addr(), sentinels[2].Addr(), wait)
	a, b := NewInstance(t), NewInstance(t)
	a.Start(topologySite(up, store))
	b.Start(topologySite(up, store))

	// two failovers under traffic: a sentinel waits twice its
	// failover-timeout (5s) before it fails the same master over again
	traffic := 20 * time.Second
	if waitReplicas {
		traffic = 40 * time.Second
	}
	topologyRunMayLose(t, name, up, []*Instance{a, b}, traffic, 5*time.Second,
		m.Kill,
		func() time.Time {
			var at time.Time
			testkit.Eventually(t, 30*time.Second, func() bool {
				addr, err := sentinels[0].MasterAddr()
				if err == nil && addr == r.Addr() && at.IsZero() {
					at = time.Now()
				}
				return !at.IsZero() && allNameMaster(sentinels, r.Addr())
			}, "%s", testkit.Lazy(func() string {
				addr, err := sentinels[0].MasterAddr()
				return fmt.Sprintf("no promotion agreed by every sentinel: master %s %v", addr, err)
			}))
			// the old master comes back and the sentinels make it a replica
			// of the new one: wait_replicas 1 can be met again
			m.Restart()
			if !waitReplicas {
				return at
			}
			// With wait_replicas, fail over once more, back to the first
			// master, so that lost 0 holds across repeated failovers.
			if err := m.WaitSynced(30 * time.Second); err != nil {
				t.Fatalf("the old master did not come back as a replica: %v", err)
			}
			r.Kill()
			first := at
			testkit.Eventually(t, 30*time.Second, func() bool {
				addr, err := sentinels[0].MasterAddr()
				if err == nil && addr == m.Addr() && at == first {
					t.Logf("second failover: new master after %s", time.Since(at).Round(time.Millisecond))
					at = time.Now()
				}
				return at != first && allNameMaster(sentinels, m.Addr())
			}, "%s", testkit.Lazy(func() string {
				addr, err := sentinels[0].MasterAddr()
				return fmt.Sprintf("no second promotion: master %s %v", addr, err)
			}))
			r.Restart()
			return at
		}, !waitReplicas)
}

// slotOwner is the node of nodes that is master of the slot of key, as
// CLUSTER NODES on the first node tells, or an error.
func slotOwner(key string, nodes []*redistest.Server) (*redistest.Server, error) {
	out, err := redistest.Cmd(nodes[0].Addr(), "CLUSTER", "KEYSLOT", key)
	if err != nil {
		return nil, err
	}
	var slot int
	if _, err := fmt.Sscan(strings.TrimSpace(out), &slot); err != nil {
		return nil, fmt.Errorf("CLUSTER KEYSLOT answered %q", out)
	}
	table, err := redistest.Cmd(nodes[0].Addr(), "CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") || f[7] != "connected" {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		for _, r := range f[8:] {
			var lo, hi int
			if n, _ := fmt.Sscanf(r, "%d-%d", &lo, &hi); n == 1 {
				hi = lo
			} else if n != 2 {
				continue
			}
			if slot >= lo && slot <= hi {
				for _, n := range nodes {
					if n.Addr() == addr {
						return n, nil
					}
				}
			}
		}
	}
	return nil, fmt.Errorf("no live master of slot %d among the nodes in:\n%s", slot, table)
}

// A Cluster of three masters with a replica each; one instance reaches it
// through a single address with cluster (as a managed endpoint), the other
// through a list of nodes, both with wait_replicas 1. The master of the
// relay's slot is killed with kill -9; its replica takes over, with every
// payload acknowledged before.
func TestRedisClusterFailover(t *testing.T) {
	var nodes []*redistest.Server
	for range 6 {
		nodes = append(nodes, redistest.Start(t, redistest.Options{AOF: true, Appendfsync: "everysec", Cluster: true}))
	}
	redistest.CreateCluster(t, 1, nodes...)
	owner, err := slotOwner("{webhook_relay:"+faultRelayName+"}:q", nodes)
	if err != nil {
		t.Fatal(err)
	}

	up := NewChaosUpstream(t, 9)
	up.Start()
	single := fmt.Sprintf(`redis redis://%s {
			cluster
			wait_replicas 1
			dial_timeout  500ms
			read_timeout  2s
			write_timeout 500ms
		}`, nodes[0].Addr())
	list := fmt.Sprintf(`redis redis://%s {
			addresses     %s %s
			wait_replicas 1
			dial_timeout  500ms
			read_timeout  2s
			write_timeout 500ms
		}`, nodes[1].Addr(), nodes[2].Addr(), nodes[3].Addr())
	a, b := NewInstance(t), NewInstance(t)
	a.Start(topologySite(up, single))
	b.Start(topologySite(up, list))

	topologyRun(t, "cluster", up, []*Instance{a, b}, 20*time.Second, 5*time.Second,
		owner.Kill,
		func() time.Time {
			var at time.Time
			var alive []*redistest.Server
			for _, n := range nodes {
				if n != owner {
					alive = append(alive, n)
				}
			}
			var ownerErr error
			testkit.Eventually(t, 45*time.Second, func() bool {
				for i := range alive {
					// any node's view: each learns of the failover by gossip
					view := append([]*redistest.Server{alive[i]}, alive...)
					if _, ownerErr = slotOwner("{webhook_relay:"+faultRelayName+"}:q", view); ownerErr == nil {
						at = time.Now()
						return true
					}
				}
				return false
			}, "%s", testkit.Lazy(func() string {
				info, _ := redistest.Cmd(alive[0].Addr(), "CLUSTER", "INFO")
				return fmt.Sprintf("no new master of the relay's slot: %v\n%s", ownerErr, info)
			}))
			owner.Restart() // rejoins as a replica
			return at
		})
}

// wait_replicas through the built Caddy: with the replica up a webhook is
// answered 200 once the replica has it; with the replica down, 503, and so
// are the sender's retries (never a 200 the replica does not back, a
// duplicate's neither); the retry once the replica is back is answered 200
// (duplicate: the payload did land on the master), and it is delivered
// once.
func TestRedisWaitReplicasAnswers503(t *testing.T) {
	m := redistest.Start(t, redistest.Options{})
	r := redistest.Start(t, redistest.Options{ReplicaOf: m})
	if err := r.WaitSynced(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	up := NewUpstream(t)
	up.Start()
	in := NewInstance(t)
	in.Start(fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay %s {
		name %s
		key json.id
		backoff 50ms 500ms
		store redis %s {
			wait_replicas 1 300ms
			dial_timeout  500ms
			read_timeout  2s
			write_timeout 500ms
		}
	}
}`, up.URL("/hook"), redisRelayName, m.URL()))

	if resp := postResp(in.URL("/hook"), payload(0)); !resp.accepted() {
		t.Fatalf("with the replica up: %s, want 200 accepted", resp)
	}
	r.Kill()
	start := time.Now()
	resp := postResp(in.URL("/hook"), payload(1))
	if resp.Status != http.StatusServiceUnavailable {
		t.Fatalf("with the replica down: %s, want 503", resp)
	}
	t.Logf("with the replica down: 503 after %s (wait_replicas timeout 300ms)", time.Since(start).Round(time.Millisecond))
	for i := range 2 {
		if resp := postResp(in.URL("/hook"), payload(1)); resp.Status != http.StatusServiceUnavailable {
			t.Errorf("retry %d with the replica down: %s, want 503 (the payload is on the master only)", i+1, resp)
		}
	}
	r.Restart()
	if err := r.WaitSynced(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if resp := postResp(in.URL("/hook"), payload(1)); !resp.duplicate() {
		t.Errorf("the retry once the replica is back: %s, want 200 duplicate (the payload was on the master)", resp)
	}
	waitDelivered(t, up, 2, 15*time.Second)
	for key, n := range up.Delivered() {
		if n != 1 {
			t.Errorf("payload %s delivered %d times", key, n)
		}
	}
}
