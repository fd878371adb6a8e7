package ops

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/bolt"
)

// fixedClock is a store clock that moves only when told to.
type fixedClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fixedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fixedClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// letter is what one dead letter of a test carries.
type letter struct {
	key, destination string
	status           int
}

// buryLetters admits and buries one entry per letter, in order, the clock
// a second further at each burial, and returns the dead letters as the
// store lists them (id order, which is the order given).
func buryLetters(t *testing.T, s queue.Store, clock *fixedClock, letters []letter) []*queue.Entry {
	t.Helper()
	ctx := context.Background()
	for _, l := range letters {
		e := &queue.Entry{Key: l.key, Destination: l.destination, Body: []byte(`{}`)}
		if a, err := s.Admit(ctx, e); err != nil || a != queue.Accepted {
			t.Fatalf("Admit(%s) = %v, %v", l.key, a, err)
		}
	}
	claimed, err := claimLanes(ctx, s, len(letters))
	if err != nil || len(claimed) != len(letters) {
		t.Fatalf("Claim = %d entries, %v; want %d", len(claimed), err, len(letters))
	}
	for i, e := range claimed {
		clock.Advance(time.Second)
		e.Attempts, e.LastStatus, e.LastError = 3, letters[i].status, "no"
		if err := s.Bury(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	var all []*queue.Entry
	for after := ""; ; {
		page, err := s.Dead(ctx, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1].ID
	}
	if len(all) != len(letters) {
		t.Fatalf("%d dead letters, want %d", len(all), len(letters))
	}
	return all
}

// claimLanes claims up to max entries from each lane these tests use
// (upstream, archive and the store's own), in ID order, which is
// admission order.
func claimLanes(ctx context.Context, s queue.Store, max int) ([]*queue.Entry, error) {
	var out []*queue.Entry
	for _, lane := range []queue.Claimer{s.Lane("upstream"), s.Lane("archive"), s} {
		es, err := lane.Claim(ctx, max)
		if err != nil {
			return nil, err
		}
		out = append(out, es...)
	}
	slices.SortFunc(out, func(a, b *queue.Entry) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// matchRelay registers a relay on the memory store, its clock an hour
// ago (the letters die before the operation starts), with the 1,200 dead
// letters of manyLetters.
func matchRelay(t *testing.T, name string) (*fakeRelay, *queue.Memory, *fixedClock, []*queue.Entry) {
	t.Helper()
	clock := &fixedClock{now: time.Now().Add(-time.Hour).Truncate(time.Second)}
	mem := queue.NewMemory(queue.Options{Window: time.Hour, Now: clock.Now})
	t.Cleanup(func() { _ = mem.Close() })
	dead := buryLetters(t, mem, clock, manyLetters())
	r := &fakeRelay{name: name, store: mem}
	Register(r)
	t.Cleanup(func() { Unregister(r) })
	return r, mem, clock, dead
}

// manyLetters are 1,200 letters: keys task-0000 to task-1199, every third
// for the archive, statuses 500, 422 and 0 (no answer) in turn.
func manyLetters() []letter {
	out := make([]letter, 1200)
	for i := range out {
		dest := "upstream"
		if i%3 == 0 {
			dest = "archive"
		}
		out[i] = letter{key: fmt.Sprintf("task-%04d", i), destination: dest, status: []int{500, 422, 0}[i%4%3]}
	}
	return out
}

func intp(n int) *int { return &n }

// remaining are the ids of the relay's dead letters now.
func remaining(t *testing.T, s queue.DeadLetters) []string {
	t.Helper()
	var ids []string
	for after := ""; ; {
		page, err := s.Dead(context.Background(), after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return ids
		}
		for _, e := range page {
			ids = append(ids, e.ID)
			after = e.ID
		}
	}
}

// split is the ids of the letters that want selects, and of the others.
func split(dead []*queue.Entry, want func(e *queue.Entry) bool) (in, out []string) {
	for _, e := range dead {
		if want(e) {
			in = append(in, e.ID)
		} else {
			out = append(out, e.ID)
		}
	}
	return in, out
}

// TestReplayByMatch: a match over 1,200 letters read 100 at a time replays
// exactly those that match (status, key substring, time range), wherever
// they are in the pages, and leaves the others dead.
func TestReplayByMatch(t *testing.T) {
	r, mem, _, dead := matchRelay(t, "match-replay")
	ctx := context.Background()
	since, until := dead[152].Died, dead[912].Died
	m := &Match{
		Status: intp(500),
		Key:    "1",                            // task-0001, task-0010 to task-0019, ...
		Since:  since.Format(time.RFC3339Nano), // inclusive: task-0152 (a 500) is in
		Until:  until.Format(time.RFC3339Nano), // exclusive: task-0912 (a 500) is out
	}
	in, out := split(dead, func(e *queue.Entry) bool {
		return e.LastStatus == 500 && strings.Contains(e.Key, "1") &&
			!e.Died.Before(since) && e.Died.Before(until)
	})
	if len(in) < 50 || !slices.Contains(in, dead[152].ID) || dead[912].LastStatus != 500 || slices.Contains(in, dead[912].ID) {
		t.Fatalf("the test's letters: %d selected; want 50 or more across pages, 152 among them, 912 (a 500) not", len(in))
	}

	n, err := replaySelected(ctx, "match-replay", Selection{Match: m}, 100)
	if err != nil || n != len(in) {
		t.Fatalf("replay by match = %d, %v; want %d", n, err, len(in))
	}
	if got := remaining(t, mem); !slices.Equal(got, out) {
		t.Errorf("%d dead letters left, want the %d that do not match", len(got), len(out))
	}
	back, err := claimLanes(ctx, mem, 2000)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(back))
	for i, e := range back {
		got[i] = e.ID
	}
	slices.Sort(got)
	if !slices.Equal(got, in) {
		t.Errorf("queued after the replay: %d entries, want the %d that match", len(got), len(in))
	}
	if r.woken.Load() == 0 {
		t.Error("the replay did not wake the deliveries")
	}

	// the same match again finds nothing left
	if n, err := ReplaySelected(ctx, "match-replay", Selection{Match: m}); n != 0 || err != nil {
		t.Errorf("replaying the same match again = %d, %v; want 0", n, err)
	}
}

// TestDeleteByMatch: destination and status, one field alone, and a
// status of 0 (no answer), each deletes exactly its letters.
func TestDeleteByMatch(t *testing.T) {
	_, mem, _, dead := matchRelay(t, "match-delete")
	ctx := context.Background()
	left, cut := slices.Clone(dead), dead[30].Died
	for _, c := range []struct {
		m    Match
		want func(e *queue.Entry) bool
	}{
		{Match{Destination: "archive", Status: intp(422)}, func(e *queue.Entry) bool {
			return e.Destination == "archive" && e.LastStatus == 422
		}},
		{Match{Status: intp(0)}, func(e *queue.Entry) bool { return e.LastStatus == 0 }},
		{Match{Key: "task-11"}, func(e *queue.Entry) bool { return strings.Contains(e.Key, "task-11") }},
		{Match{Until: cut.Format(time.RFC3339)}, func(e *queue.Entry) bool { return e.Died.Before(cut) }},
	} {
		in, out := split(left, c.want)
		if len(in) == 0 {
			t.Fatalf("%v selects none of the test's letters", c.m)
		}
		n, err := deleteSelected(ctx, "match-delete", Selection{Match: &c.m}, 77)
		if err != nil || n != len(in) {
			t.Fatalf("delete by %v = %d, %v; want %d", c.m, n, err, len(in))
		}
		if got := remaining(t, mem); !slices.Equal(got, out) {
			t.Fatalf("delete by %v: %d dead letters left, want %d", c.m, len(got), len(out))
		}
		left = slices.DeleteFunc(left, c.want)
	}
	if st, _ := mem.Stats(ctx); st.Backlog != 0 {
		t.Errorf("deleting queued something: %+v", st)
	}
}

// TestSelectionRefused: a match that names nothing, a time that is not
// RFC 3339, times out of order, a status that cannot be one, several kinds
// at once.
func TestSelectionRefused(t *testing.T) {
	_, mem, _, _ := matchRelay(t, "match-refused")
	ctx := context.Background()
	for _, c := range []struct {
		sel  Selection
		want string
	}{
		{Selection{Match: &Match{}}, "match needs at least one field; use all to act on every letter"},
		{Selection{Match: &Match{Since: "yesterday"}}, `match.since: "yesterday" is not an RFC 3339 time`},
		{Selection{Match: &Match{Key: "x", Until: "2026-12-06 20:00"}}, `match.until: "2026-12-06 20:00" is not an RFC 3339 time`},
		{Selection{Match: &Match{Since: "2026-12-06T20:00:00Z", Until: "2026-12-06T20:00:00Z"}}, "match.since must be before match.until"},
		{Selection{Match: &Match{Status: intp(-1)}}, "match.status: want an HTTP status code"},
		{Selection{All: true, Match: &Match{Key: "x"}}, "give one of ids, all and match"},
		{Selection{IDs: []string{}, All: true}, "give one of ids, all and match"},
	} {
		for verb, do := range map[string]func(context.Context, string, Selection) (int, error){
			"replay": ReplaySelected, "delete": DeleteSelected,
		} {
			n, err := do(ctx, "match-refused", c.sel)
			if n != 0 || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s %+v = %d, %v; want ErrInvalid %q", verb, c.sel, n, err, c.want)
			}
		}
	}
	if n, err := ReplaySelected(ctx, "match-refused", Selection{}); n != 0 || err != nil {
		t.Errorf("a selection of nothing = %d, %v; want 0 and no error", n, err)
	}
	if _, err := ReplaySelected(ctx, "no-such-relay", Selection{Match: &Match{Key: "x"}}); !errors.Is(err, ErrNoRelay) {
		t.Errorf("match on an unknown relay: %v", err)
	}
	if st, _ := mem.Stats(ctx); st.Dead != 1200 {
		t.Errorf("refused selections changed the dead letters: %+v", st)
	}
}

// countingStore watches what the operations ask of a store: the largest
// page asked for and handed back, the largest replay, how many Dead calls.
type countingStore struct {
	Store
	mu                                      sync.Mutex
	deadCalls, maxLimit, maxPage, maxReplay int
	// after, when set, runs after each Replay with the ids replayed.
	after func(ids []string)
}

func (s *countingStore) Dead(ctx context.Context, after string, limit int) ([]*queue.Entry, error) {
	es, err := s.Store.Dead(ctx, after, limit)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadCalls++
	s.maxLimit, s.maxPage = max(s.maxLimit, limit), max(s.maxPage, len(es))
	if s.deadCalls > 10_000 {
		return nil, errors.New("paging does not end")
	}
	return es, err
}

func (s *countingStore) Replay(ctx context.Context, ids []string) (int, error) {
	s.mu.Lock()
	s.maxReplay = max(s.maxReplay, len(ids))
	if ids == nil {
		s.maxReplay = -1 // everything at once
	}
	s.mu.Unlock()
	n, err := s.Store.Replay(ctx, ids)
	if s.after != nil {
		s.after(ids)
	}
	return n, err
}

// TestReplayByMatchRacesDeaths: every letter replayed fails again at once
// and dies again (a later Died, the same id) while the match pages on. The
// match still ends, and replays each matching letter once.
func TestReplayByMatchRacesDeaths(t *testing.T) {
	r, mem, clock, dead := matchRelay(t, "match-race")
	ctx := context.Background()
	cs := &countingStore{Store: mem}
	r.store = cs
	cs.after = func([]string) {
		claimed, err := claimLanes(ctx, mem, 1000)
		if err != nil {
			t.Error(err)
			return
		}
		for _, e := range claimed {
			clock.Advance(time.Millisecond)
			e.Attempts, e.LastStatus = 1, 500
			if err := mem.Bury(ctx, e); err != nil {
				t.Error(err)
			}
		}
	}
	in, _ := split(dead, func(e *queue.Entry) bool { return e.LastStatus == 500 })
	n, err := replaySelected(ctx, "match-race", Selection{Match: &Match{Status: intp(500)}}, 50)
	if err != nil || n != len(in) {
		t.Fatalf("replay by match while replayed letters die again = %d, %v; want %d", n, err, len(in))
	}
	if want := 1200/50 + 1; cs.deadCalls != want {
		t.Errorf("%d pages read, want %d (each letter once, and the empty page at the end)", cs.deadCalls, want)
	}
	if st, _ := mem.Stats(ctx); st.Dead != 1200 || st.Backlog != 0 {
		t.Errorf("after the race: %+v, want all 1200 dead again", st)
	}
}

// TestReplayByMatchBounded replays 100,000 dead letters of a bolt store
// by match and checks that the operation never asked the store for, nor
// held, more than one page of them, nor replayed more than a page at once.
func TestReplayByMatchBounded(t *testing.T) {
	const total = 100_000
	s, err := bolt.Open(filepath.Join(t.TempDir(), "relay.db"), queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 32 { // concurrent admits and burials share commits
		wg.Go(func() {
			for i := w; i < total; i += 32 {
				status := 500
				if i%10 == 0 {
					status = 404
				}
				e := &queue.Entry{Key: fmt.Sprintf("k%06d-%d", i, status), Body: []byte(`{}`)}
				if _, err := s.Admit(ctx, e); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for {
		claimed, err := claimLanes(ctx, s, 3200)
		if err != nil {
			t.Fatal(err)
		}
		if len(claimed) == 0 {
			break
		}
		for w := range 32 {
			wg.Go(func() {
				for i := w; i < len(claimed); i += 32 {
					e := claimed[i]
					e.LastStatus = 500
					if strings.HasSuffix(e.Key, "-404") {
						e.LastStatus = 404
					}
					if err := s.Bury(ctx, e); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	if t.Failed() {
		t.FailNow()
	}

	cs := &countingStore{Store: s}
	r := &fakeRelay{name: "match-bounded", store: cs}
	Register(r)
	t.Cleanup(func() { Unregister(r) })
	const page = 400
	n, err := replaySelected(ctx, "match-bounded", Selection{Match: &Match{Status: intp(500)}}, page)
	if want := total - total/10; err != nil || n != want {
		t.Fatalf("replay by match = %d, %v; want %d", n, err, want)
	}
	t.Logf("%d pages read, the largest %d letters (asked for %d), the largest replay %d ids",
		cs.deadCalls, cs.maxPage, cs.maxLimit, cs.maxReplay)
	if cs.maxLimit > page || cs.maxPage > page || cs.maxReplay > page || cs.maxReplay < 1 {
		t.Errorf("the match held up to %d letters (asked for %d) and replayed up to %d at once; want at most a page, %d",
			cs.maxPage, cs.maxLimit, cs.maxReplay, page)
	}
	if cs.deadCalls < total/page {
		t.Errorf("%d pages read for %d letters of %d", cs.deadCalls, total, page)
	}
	if matchPage > MaxPage {
		t.Errorf("a match reads %d letters at a time, more than a page of the admin API (%d)", matchPage, MaxPage)
	}
	if st, _ := s.Stats(ctx); st.Dead != total/10 || st.Backlog != total-total/10 {
		t.Errorf("after the replay: %+v", st)
	}
}
