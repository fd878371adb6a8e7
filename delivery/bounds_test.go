package delivery

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// The memory budget, not the concurrency, decides how many large bodies
// are out at once; once each attempt is over its bytes are back.
func TestBudgetBoundsBodiesInFlight(t *testing.T) {
	const size = 100 << 10
	release := make(chan struct{})
	arrived := make(chan int, 100)
	var mu sync.Mutex
	inFlight, most := 0, 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		arrived <- len(body)
		<-release
		mu.Lock()
		inFlight--
		mu.Unlock()
	}))
	t.Cleanup(up.Close)
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
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("fewer than three bodies reached the upstream within 10s")
		}
	}
	select {
	case n := <-arrived:
		t.Fatalf("a fourth body (%d bytes) was sent while three held the whole budget", n)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	mu.Lock()
	defer mu.Unlock()
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
	up := newUpstream(t, func(*http.Request, []byte) int { return 200 })
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
		if got := up.next(t); string(got.body) == `"bad"` {
			t.Error("the damaged entry was sent upstream")
		}
	}
}

func TestDeadLettersTrimmedToMaxDead(t *testing.T) {
	up := newUpstream(t, func(*http.Request, []byte) int { return 422 })
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
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(dropped)
		mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters reported dropped, want 3", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDeadLettersPastRetentionRemoved(t *testing.T) {
	up := newUpstream(t, func(*http.Request, []byte) int { return 422 })
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
