package delivery

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// The memory budget, not the concurrency, decides how many large bodies
// are out at once; once each attempt is over its bytes are back.
func TestBudgetBoundsBodiesInFlight(t *testing.T) {
	const size = 100 << 10
	release := make(chan struct{})
	up := testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer { return testkit.Answer{Until: release} })
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL)
	s.Concurrency = 8
	mem := budget.New(3*size, 0) // room for three bodies
	e := Start(Config{Store: store, Settings: s, Budget: mem, PollInterval: 20 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })
	for i := range 10 {
		admit(t, store, "k"+strconv.Itoa(i), string(bytes.Repeat([]byte{'a' + byte(i)}, size)))
	}

	// three arrive and hold on; no fourth while they do
	for range 3 {
		up.Next(t)
	}
	time.Sleep(100 * time.Millisecond)
	if reqs := up.Requests(); len(reqs) > 3 {
		t.Fatalf("a fourth body (%d bytes) was sent while three held the whole budget", len(reqs[3].Body))
	}
	close(release)
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	most := 0
	for _, r := range up.Requests() {
		most = max(most, r.Open)
	}
	if most > 3 {
		t.Errorf("%d bodies of %d bytes were out at once within a budget of %d", most, size, 3*size)
	}
	if used := mem.Used(); used != 0 {
		t.Errorf("budget holds %d bytes after every delivery ended", used)
	}
}

// damagingStore reports one entry as unreadable, as a store does when its
// record is damaged.
type damagingStore struct {
	queue.Store
	damaged string
}

func (s *damagingStore) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	es, err := s.Store.Claim(ctx, max)
	for _, e := range es {
		if e.ID == s.damaged {
			*e = queue.Entry{ID: e.ID, Damaged: "cannot be read: test"}
		}
	}
	return es, err
}

func TestDamagedEntryIsBuriedAndTheRestFlows(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(200))
	mem := queue.NewMemory(queue.Options{Window: time.Hour})
	store := &damagingStore{Store: mem}
	bad := admit(t, mem, "bad", `"bad"`)
	store.damaged = bad.ID
	admit(t, mem, "good1", `"good1"`)
	admit(t, mem, "good2", `"good2"`)
	startEngine(t, store, settingsFor(t, up.URL))

	waitStats(t, mem, func(st queue.Stats) bool { return st.Backlog == 0 && st.Dead == 1 })
	d, err := mem.DeadEntry(context.Background(), bad.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d.LastError != "cannot be read: test" {
		t.Errorf("dead letter reason %q, want the damage", d.LastError)
	}
	for range 2 {
		if got := up.Next(t); string(got.Body) == `"bad"` {
			t.Error("the damaged entry was sent upstream")
		}
	}
}

func TestDeadLettersTrimmedToMaxDead(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(422))
	store := queue.NewMemory(queue.Options{Window: time.Hour})
	s := settingsFor(t, up.URL)
	s.MaxDead = 2
	var mu sync.Mutex
	var dropped []string
	e := Start(Config{Store: store, Settings: s, PollInterval: 20 * time.Millisecond,
		DeadDropped: func(d *queue.Entry) {
			mu.Lock()
			defer mu.Unlock()
			dropped = append(dropped, d.Key)
		}})
	t.Cleanup(func() { e.Stop(time.Second) })
	for i := range 5 {
		admit(t, store, "k"+strconv.Itoa(i), `{}`)
	}
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 && st.Dead == 2 })
	n := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(dropped)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return n() == 3 }, "%s dead letters reported dropped, want 3", testkit.Lazy(func() string { return fmt.Sprint(n()) }))
}

func TestDeadLettersPastRetentionRemoved(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(422))
	clock := struct {
		sync.Mutex
		now time.Time
	}{now: time.Now()}
	now := func() time.Time { clock.Lock(); defer clock.Unlock(); return clock.now }
	store := queue.NewMemory(queue.Options{Window: time.Hour, Now: now})
	s := settingsFor(t, up.URL)
	s.DeadRetention = time.Hour
	e := Start(Config{Store: store, Settings: s, PollInterval: 20 * time.Millisecond,
		TrimInterval: 10 * time.Millisecond, Now: now})
	t.Cleanup(func() { e.Stop(time.Second) })
	admit(t, store, "k", `{}`)
	waitStats(t, store, func(st queue.Stats) bool { return st.Dead == 1 })
	clock.Lock()
	clock.now = clock.now.Add(time.Hour + time.Second)
	clock.Unlock()
	waitStats(t, store, func(st queue.Stats) bool { return st.Dead == 0 })
}
