package processtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// max_stored against a spike: while the app is down, 24 Runware results of
// 6 MiB (base64Data) are offered once each to a relay with max_stored
// 64MiB. The first ones that fit are accepted, the rest get 503 with
// Retry-After and a JSON error saying the store is full. What the store
// takes stays within twice the bound plus one growth step: the bolt file
// (bbolt grows it 16 MiB past what it needs, its AllocSize), and Redis's
// used_memory as another client reads it (one payload: the body staged
// before the admit script refuses it). Once the app is back every accepted
// payload arrives exactly once, the refused ones never, and a new payload
// is accepted again.
//
//	go test -race -count=1 -v -run MaxStored ./processtest/

const (
	stPayloads  = 24
	stMaxStored = 64 << 20
	stRelayName = "stored"
	stBoltGrow  = 16 << 20 // bbolt's DefaultAllocSize: the file grows by it past 16 MiB
)

func stSite(up *lbUpstream, store string) string {
	return fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay %s {
		name %s
		store %s
		max_stored %d
		backoff 100ms 1s
		history off # the payloads' own bytes are measured: no record keeps a body
	}
}`, up.URL("/hook"), stRelayName, store, stMaxStored)
}

func TestMaxStoredBolt(t *testing.T) {
	runMaxStored(t, nil)
}

func TestMaxStoredRedis(t *testing.T) {
	runMaxStored(t, redistest.Start(t, redistest.Options{}))
}

func runMaxStored(t *testing.T, srv *redistest.Server) {
	start := time.Now()
	up := newLBUpstream(t) // not started: the app is down
	store, name := "bolt", "bolt"
	if srv != nil {
		store, name = "redis "+srv.URL(), "redis"
	}
	in := NewInstance(t)
	in.Start(stSite(up, store))
	gen := newLBPayloads(uint64(time.Now().UnixNano()))
	fits := stMaxStored / gen.size // no kept headers: a payload counts its body
	if fits < 2 || fits >= stPayloads {
		t.Fatalf("wrong test: %d payloads of %d bytes fit in %d", fits, gen.size, stMaxStored)
	}

	// what the store takes, sampled after each step
	boltFile := filepath.Join(in.DataDir(), "webhook_relay", stRelayName+".db")
	var peak int64
	measure := func() {
		var n int64
		if srv == nil {
			fi, err := os.Stat(boltFile)
			if err != nil {
				t.Fatalf("the bolt file: %v", err)
			}
			n = fi.Size()
		} else {
			n = stRedisUsedMemory(t, srv)
		}
		peak = max(peak, n)
	}
	measure()
	before := peak

	client := &http.Client{Timeout: 30 * time.Second}
	offer := func(i int) (int, http.Header, string) {
		body, _, _, _ := gen.body(i)
		resp, err := client.Post(in.URL("/hook"), "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("payload %d: %v", i, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		measure()
		return resp.StatusCode, resp.Header, string(b)
	}
	offerStart := time.Now()
	for i := range stPayloads {
		status, header, body := offer(i)
		if i < fits {
			if status != http.StatusOK {
				t.Fatalf("%s: payload %d of %d (%d fit in max_stored): status %d %s, want 200", name, i, stPayloads, fits, status, body)
			}
			continue
		}
		var e struct{ Status, Error string }
		if status != http.StatusServiceUnavailable || header.Get("Retry-After") == "" ||
			json.Unmarshal([]byte(body), &e) != nil || e.Status != "error" || !strings.Contains(e.Error, "store full") {
			t.Fatalf("%s: payload %d past max_stored: status %d, Retry-After %q, body %s; want 503 with Retry-After and a JSON error saying the store is full",
				name, i, status, header.Get("Retry-After"), body)
		}
	}
	offered := time.Since(offerStart)
	ov := stOverview(t, in)
	if ov.StoredBytes != int64(fits*gen.size) || ov.MaxStored != stMaxStored || ov.Backlog != fits {
		t.Fatalf("%s: overview stored_bytes %d of max_stored %d, backlog %d; want %d, %d, %d",
			name, ov.StoredBytes, ov.MaxStored, ov.Backlog, fits*gen.size, stMaxStored, fits)
	}
	bound := int64(2*stMaxStored + stBoltGrow)
	if srv != nil {
		bound = int64(2*stMaxStored + gen.size)
	}
	if peak > bound {
		t.Fatalf("%s: the store took %d bytes (%.1f MiB) for %d payloads of %d bytes under max_stored %d; want at most %d (twice the bound plus one growth step)",
			name, peak, float64(peak)/(1<<20), fits, gen.size, stMaxStored, bound)
	}
	spikePeak := peak

	// The app is back: every accepted payload arrives once.
	up.Start()
	recovered := time.Now()
	delivered := func() bool {
		for i := range fits {
			_, sum, _, _ := gen.body(i)
			if up.oks(sum) == 0 {
				return false
			}
		}
		return true
	}
	testkit.Eventually(t, 30*time.Second, delivered, "%s: not every accepted payload was delivered after the app came back: %s", name,
		testkit.Lazy(func() string { return up.summary() }))
	drained := time.Since(recovered)
	for i := range stPayloads {
		_, sum, _, _ := gen.body(i)
		want := 1
		if i >= fits {
			want = 0
		}
		if n := up.oks(sum); n != want {
			t.Errorf("%s: payload %d delivered %d times, want %d", name, i, n, want)
		}
	}
	if probs := up.problems(); len(probs) > 0 {
		t.Errorf("%s: %s", name, strings.Join(probs, "; "))
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		ov = stOverview(t, in)
		return ov.Backlog == 0 && ov.StoredBytes == 0
	}, "%s: the delivered payloads' bytes were not given back: %+v", name, testkit.Lazy(func() string { return fmt.Sprintf("%+v", ov) }))

	// Acceptance resumes: a refused payload's retry and a new one.
	for _, i := range []int{fits, stPayloads} {
		if status, _, body := offer(i); status != http.StatusOK {
			t.Fatalf("%s: payload %d after the store emptied: status %d %s, want 200", name, i, status, body)
		}
	}
	testkit.Eventually(t, 30*time.Second, func() bool {
		_, a, _, _ := gen.body(fits)
		_, b, _, _ := gen.body(stPayloads)
		return up.oks(a) == 1 && up.oks(b) == 1
	}, "%s: the payloads accepted after the spike were not delivered: %s", name, testkit.Lazy(func() string { return up.summary() }))
	measure()
	t.Logf("%s: %d of %d payloads of %d bytes accepted under max_stored %d MiB, the rest 503 (offered in %s); store before %.1f MiB, peak in the spike %.1f MiB, peak after resuming %.1f MiB (bound %.0f MiB); delivered %s after the app came back; %s in all",
		name, fits, stPayloads, gen.size, stMaxStored>>20, offered.Round(time.Millisecond), float64(before)/(1<<20),
		float64(spikePeak)/(1<<20), float64(peak)/(1<<20), float64(bound)/(1<<20), drained.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if peak > bound {
		t.Fatalf("%s: the store took %d bytes after the spike; want at most %d", name, peak, bound)
	}
}

// stOverviewEntry is the part of the admin overview this test reads.
type stOverviewEntry struct {
	Name        string `json:"name"`
	Backlog     int    `json:"backlog"`
	StoredBytes int64  `json:"stored_bytes"`
	MaxStored   int64  `json:"max_stored"`
}

func stOverview(t *testing.T, in *Instance) stOverviewEntry {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/webhook_relay/", in.AdminPort))
	if err != nil {
		t.Fatalf("admin overview: %v", err)
	}
	defer resp.Body.Close()
	var all []stOverviewEntry
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		t.Fatalf("admin overview: %v", err)
	}
	for _, e := range all {
		if e.Name == stRelayName {
			return e
		}
	}
	t.Fatalf("admin overview lists no relay %q", stRelayName)
	return stOverviewEntry{}
}

// stRedisUsedMemory is INFO memory's used_memory, read by a client of its
// own.
func stRedisUsedMemory(t *testing.T, srv *redistest.Server) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := inspector(t, srv).Info(ctx, "memory").Result()
	if err != nil {
		t.Fatalf("INFO memory: %v", err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("used_memory %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatal("no used_memory in INFO memory")
	return 0
}
