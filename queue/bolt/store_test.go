package bolt_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/bolt"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

func openBolt(t testing.TB, path string, opts queue.Options) *bolt.Store {
	t.Helper()
	s, err := bolt.Open(path, opts)
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestBolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts queue.Options) queue.Store {
		return openBolt(t, filepath.Join(t.TempDir(), "relay.db"), opts)
	})
}

func TestBoltCreatesDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "webhook_relay", "default.db")
	openBolt(t, path, queue.Options{Window: time.Hour})
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("directory mode %v, want 0700", perm)
	}
}

// What a 200 promised is still there after the store is closed and opened
// again: queued payloads (claims forgotten), dead letters, markers.
func TestBoltReopen(t *testing.T) {
	ctx := t.Context()
	clock := storetest.NewClock()
	opts := queue.Options{Window: time.Hour, MaxBacklog: 10, Now: clock.Now}
	path := filepath.Join(t.TempDir(), "relay.db")
	s := openBolt(t, path, opts)

	admit := func(s queue.Store, key string) *queue.Entry {
		t.Helper()
		e := &queue.Entry{Key: key, Body: []byte(`{"k":"` + key + `"}`), Request: queue.RequestMeta{ContentType: "application/json"}}
		if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
			t.Fatalf("Admit(%s) = %v, %v", key, got, err)
		}
		return e
	}
	a, b, c := admit(s, "a"), admit(s, "b"), admit(s, "c")
	claimed, err := s.Claim(ctx, 3)
	if err != nil || len(claimed) != 3 {
		t.Fatalf("Claim = %d, %v", len(claimed), err)
	}
	if err := s.Ack(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	claimed[1].Attempts, claimed[1].LastStatus, claimed[1].LastError = 4, 422, "unknown task"
	if err := s.Bury(ctx, claimed[1]); err != nil {
		t.Fatal(err)
	}
	// c stays claimed when the store closes
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	clock.Advance(time.Minute)
	s = openBolt(t, path, opts)
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Backlog != 1 || st.Dead != 1 || !st.OldestQueued.Equal(c.Queued) {
		t.Fatalf("Stats after reopen = %+v, want backlog 1, dead 1, oldest %v", st, c.Queued)
	}
	got, err := s.Claim(ctx, 10)
	if err != nil || len(got) != 1 || got[0].ID != c.ID || got[0].BodySize != len(c.Body) ||
		!reflect.DeepEqual(got[0].Request, c.Request) || !got[0].Received.Equal(c.Received) {
		t.Fatalf("Claim after reopen = %+v, %v; want %s", got, err, c.ID)
	}
	if body, err := s.Body(ctx, c.ID); err != nil || !bytes.Equal(body, c.Body) {
		t.Fatalf("Body(%s) after reopen = %q, %v; want its body", c.ID, body, err)
	}
	d, err := s.DeadEntry(ctx, b.ID)
	if err != nil || !bytes.Equal(d.Body, b.Body) || d.Attempts != 4 || d.LastStatus != 422 || d.LastError != "unknown task" {
		t.Fatalf("DeadEntry(%s) after reopen = %+v, %v", b.ID, d, err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if got, err := s.Admit(ctx, &queue.Entry{Key: k}); err != nil || got != queue.Duplicate {
			t.Errorf("Admit(%s) after reopen = %v, %v; want duplicate", k, got, err)
		}
	}
	e := admit(s, "d")
	if e.ID <= c.ID {
		t.Errorf("id %s after reopen does not sort after %s", e.ID, c.ID)
	}
	// the counts survive too: the bound still holds
	for i := range 8 {
		admit(s, "fill"+strconv.Itoa(i))
	}
	if _, err := s.Admit(ctx, &queue.Entry{Key: "over"}); !errors.Is(err, queue.ErrBacklogFull) {
		t.Errorf("Admit past the bound after reopen = %v, want ErrBacklogFull", err)
	}
}

// Under a steady stream of unique keys that are delivered, the file stops
// growing: delivered payloads are deleted, expired markers swept, and bbolt
// reuses the pages they held.
func TestBoltSweepBoundsFileSize(t *testing.T) {
	ctx := t.Context()
	clock := storetest.NewClock()
	const window = 10 * time.Minute
	path := filepath.Join(t.TempDir(), "relay.db")
	s := openBolt(t, path, queue.Options{Window: window, Now: clock.Now})
	body := bytes.Repeat([]byte("x"), 300)

	const rounds, perRound = 40, 500
	sizes := make([]int64, rounds)
	swept := 0
	for r := range rounds {
		// concurrently, as a relay under load does: commits are shared
		inParallel(perRound, func(i int) {
			e := &queue.Entry{Key: fmt.Sprintf("task-%d-%d", r, i), Body: body}
			if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
				t.Errorf("Admit = %v, %v", got, err)
			}
		})
		es, err := s.Claim(ctx, perRound)
		if err != nil || len(es) != perRound {
			t.Fatalf("Claim = %d entries, %v; want %d", len(es), err, perRound)
		}
		inParallel(len(es), func(i int) {
			if err := s.Ack(ctx, es[i].ID); err != nil {
				t.Errorf("Ack: %v", err)
			}
		})
		if t.Failed() {
			t.FailNow()
		}
		// each round is a minute: markers live for ten rounds
		clock.Advance(time.Minute)
		n, err := s.Sweep(ctx)
		if err != nil {
			t.Fatal(err)
		}
		swept += n
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		sizes[r] = fi.Size()
	}
	t.Logf("file size per round: %v; %d markers swept", sizes, swept)
	if want := (rounds - 10) * perRound; swept < want {
		t.Errorf("swept %d markers, want at least %d", swept, want)
	}
	// ten rounds of markers are alive at any time; after twice that the
	// file must have stopped growing
	if last, levelled := sizes[rounds-1], sizes[2*10]; last > levelled {
		t.Errorf("file grew from %d to %d bytes between rounds 20 and %d: not levelling off", levelled, last, rounds)
	}
	// and what expired is forgotten: the key is accepted again
	if got, err := s.Admit(ctx, &queue.Entry{Key: "task-0-0"}); err != nil || got != queue.Accepted {
		t.Errorf("Admit of a swept key = %v, %v; want accepted", got, err)
	}
}

// inParallel runs fn(0..n-1) on up to 64 goroutines and waits for them.
func inParallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range min(n, 64) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				fn(i)
			}
		})
	}
	wg.Wait()
}

// A re-admitted key keeps its new marker when the sweep meets the old one.
func TestBoltSweepKeepsNewerMarker(t *testing.T) {
	ctx := t.Context()
	clock := storetest.NewClock()
	s := openBolt(t, filepath.Join(t.TempDir(), "relay.db"), queue.Options{Window: time.Hour, Now: clock.Now})
	if got, err := s.Admit(ctx, &queue.Entry{Key: "k"}); err != nil || got != queue.Accepted {
		t.Fatal(got, err)
	}
	clock.Advance(time.Hour) // expired, not yet swept
	if got, err := s.Admit(ctx, &queue.Entry{Key: "k"}); err != nil || got != queue.Accepted {
		t.Fatal(got, err)
	}
	if n, err := s.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want the old marker gone", n, err)
	}
	if got, err := s.Admit(ctx, &queue.Entry{Key: "k"}); err != nil || got != queue.Duplicate {
		t.Fatalf("Admit after sweeping the old marker = %v, %v; want duplicate", got, err)
	}
}

// A file that is not a readable bbolt database is an error naming it, and
// nothing is written to it.
func TestBoltCorruptFile(t *testing.T) {
	for _, size := range []int{100, 4096, 64 << 10} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "relay.db")
			garbage := make([]byte, size)
			for i := range garbage {
				garbage[i] = byte(i*31 + i>>7 + 1)
			}
			if err := os.WriteFile(path, garbage, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := bolt.Open(path, queue.Options{Window: time.Hour})
			if err == nil {
				_ = s.Close()
				t.Fatal("bolt.Open opened a file of garbage")
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			t.Logf("error: %v", err)
			after, rerr := os.ReadFile(path)
			if rerr != nil || !bytes.Equal(after, garbage) {
				t.Errorf("the file was changed (%d bytes, was %d; %v)", len(after), size, rerr)
			}
		})
	}
}

// A bbolt file of some other program is refused, not adopted.
func TestBoltForeignFile(t *testing.T) {
	wantRefused(t, func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte("users"))
		return err
	}, "not a webhook_relay store", "adopted another program's bbolt file")
}

// A store file of another format (an earlier build's) is refused at Open,
// saying so, and left as it is.
func TestBoltOtherFormat(t *testing.T) {
	wantRefused(t, func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucket([]byte("meta"))
		if err != nil {
			return err
		}
		return meta.Put([]byte("format"), []byte("webhook_relay/bolt/1"))
	}, `"webhook_relay/bolt/1"`, "read a file of another format")
}

// wantRefused writes a bbolt file with fill and checks that bolt.Open
// refuses it with an error naming the file and saying want, and leaves it
// as it was; bad says what accepting it would have done.
func wantRefused(t *testing.T, fill func(*bbolt.Tx) error, want, bad string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fill); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	s, err := bolt.Open(path, queue.Options{Window: time.Hour})
	if err == nil {
		_ = s.Close()
		t.Fatal("bolt.Open " + bad)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the file and say %s", err, want)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("the file was changed")
	}
}

// A file held by another opener (flock is per open file, so a second Open
// in the same process is refused as another process would be) fails fast
// with an error naming the file.
func TestBoltLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	openBolt(t, path, queue.Options{Window: time.Hour})

	start := time.Now()
	s, err := bolt.Open(path, queue.Options{Window: time.Hour})
	took := time.Since(start)
	if err == nil {
		_ = s.Close()
		t.Fatal("a second bolt.Open on the same file succeeded")
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another process holds") {
		t.Errorf("error %q does not name the file and say another process holds it", err)
	}
	if took > bolt.OpenTimeout+2*time.Second {
		t.Errorf("the second bolt.Open took %s to fail, want about %s", took, bolt.OpenTimeout)
	}
}

func TestBoltPathIsDirectory(t *testing.T) {
	dir := t.TempDir()
	if _, err := bolt.Open(dir, queue.Options{}); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("bolt.Open(directory) = %v, want an error naming it", err)
	}
}

// Keys longer than bbolt allows for a key are stored by their hash.
func TestBoltLongKey(t *testing.T) {
	s := openBolt(t, filepath.Join(t.TempDir(), "relay.db"), queue.Options{Window: time.Hour})
	long := strings.Repeat("k", 64<<10)
	for _, want := range []queue.Admission{queue.Accepted, queue.Duplicate} {
		if got, err := s.Admit(t.Context(), &queue.Entry{Key: long}); err != nil || got != want {
			t.Fatalf("Admit(64 KiB key) = %v, %v; want %v", got, err, want)
		}
	}
	if got, err := s.Admit(t.Context(), &queue.Entry{Key: long + "x"}); err != nil || got != queue.Accepted {
		t.Fatalf("Admit(other long key) = %v, %v; want accepted", got, err)
	}
}

func BenchmarkBoltAdmit(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) queue.Store {
		return openBolt(b, filepath.Join(b.TempDir(), "relay.db"), queue.Options{Window: 24 * time.Hour})
	})
}

func TestBoltDamagedEntryDoesNotHaltClaims(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "relay.db")
	opts := queue.Options{Window: time.Hour}
	s := openBolt(t, path, opts)
	var admitted []*queue.Entry
	for _, k := range []string{"a", "b", "c"} {
		e := &queue.Entry{Key: k, Body: []byte(`{"k":"` + k + `"}`)}
		if _, err := s.Admit(ctx, e); err != nil {
			t.Fatal(err)
		}
		admitted = append(admitted, e)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	damaged := admitted[1]
	if err := db.Update(func(tx *bbolt.Tx) error {
		// the store's own lane: its keys start with the name's length, 0
		return tx.Bucket([]byte("queue")).Put(append([]byte{0}, damaged.ID...), []byte{0xff, 0x01, 0x02})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = openBolt(t, path, opts)
	got, err := s.Claim(ctx, 10)
	if err != nil {
		t.Fatalf("Claim with a damaged record: %v", err)
	}
	if len(got) != 3 || got[1].ID != damaged.ID || got[1].Damaged == "" || got[0].Damaged != "" || got[2].Damaged != "" {
		t.Fatalf("Claim = %+v, want all three with only %s damaged", got, damaged.ID)
	}
	got[1].LastError = got[1].Damaged
	if err := s.Bury(ctx, got[1]); err != nil {
		t.Fatalf("Bury of the damaged entry: %v", err)
	}
	d, err := s.DeadEntry(ctx, damaged.ID)
	if err != nil || d.LastError != got[1].Damaged || !bytes.Equal(d.Body, damaged.Body) {
		t.Fatalf("dead letter of the damaged entry = %+v, %v; want its reason and body", d, err)
	}
	if st, _ := s.Stats(ctx); st.Backlog != 2 || st.Dead != 1 {
		t.Fatalf("Stats = %+v, want backlog 2, dead 1", st)
	}
}

// A retry waits in the file: after a restart it is still there, due when
// it was, with its attempt; what was held is handed out again at once.
func TestBoltRetrySurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	clock := storetest.NewClock()
	opts := queue.Options{Window: time.Hour, Now: clock.Now}
	first, err := bolt.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	storetest.RetryHandover(t, clock, first, func() queue.Store {
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		return openBolt(t, path, opts)
	})
}

// A pause is kept in the file: after a restart the destination is still
// paused.
func TestBoltPauseSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	opts := queue.Options{Window: time.Hour}
	first, err := bolt.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	storetest.PauseSurvives(t, first, func() queue.Store {
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		return openBolt(t, path, opts)
	})
}

// Each lane's deliveries are in the file: after a restart each lane hands
// its delivery out again, with the body they share.
func TestBoltLanesSurviveRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	clock := storetest.NewClock()
	opts := queue.Options{Window: time.Hour, Now: clock.Now}
	first, err := bolt.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	storetest.LanesSurvive(t, clock, first, func() queue.Store {
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		return openBolt(t, path, opts)
	})
}

// What the lanes hold is counted again at open (Stats.Lanes, the backlog
// against MaxBacklog), and a payload's body stays shared: a dead letter
// whose other delivery was acknowledged before the restart still has it,
// and the bytes are given back with it.
func TestBoltLanesCountedAtOpen(t *testing.T) {
	ctx := t.Context()
	clock := storetest.NewClock()
	opts := queue.Options{Window: time.Hour, MaxBacklog: 4, Now: clock.Now}
	path := filepath.Join(t.TempDir(), "relay.db")
	s := openBolt(t, path, opts)
	admit := func(s queue.Store, key string, dests ...string) (*queue.Entry, error) {
		e := &queue.Entry{Key: key, Body: []byte(`{"k":"` + key + `"}`), Destinations: dests,
			Request: queue.RequestMeta{Headers: []queue.HeaderField{{Name: "Webhook-Id", Value: key}}}}
		_, err := s.Admit(ctx, e)
		return e, err
	}
	a, err := admit(s, "a", "app", "archive", "analytics")
	if err != nil {
		t.Fatal(err)
	}
	app, archive := s.Lane("app"), s.Lane("archive")
	d, err := archive.Claim(ctx, 1)
	if err != nil || len(d) != 1 {
		t.Fatalf("archive: Claim = %d, %v", len(d), err)
	}
	if err := archive.Bury(ctx, d[0]); err != nil {
		t.Fatal(err)
	}
	b, err := admit(s, "b", "app")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openBolt(t, path, opts)
	size := queue.StoredSize(len(a.Body), a.Request.Headers) + queue.StoredSize(len(b.Body), b.Request.Headers)
	st, err := s.Stats(ctx)
	want := map[string]int{"app": 2, "analytics": 1}
	if err != nil || st.Backlog != 3 || st.Dead != 1 || !reflect.DeepEqual(st.Lanes, want) || st.Stored != size {
		t.Fatalf("Stats after reopen = %+v, %v; want backlog 3, dead 1, lanes %v, stored %d", st, err, want, size)
	}
	// three places taken: a payload for two destinations does not fit
	if _, err := admit(s, "c", "app", "archive"); !errors.Is(err, queue.ErrBacklogFull) {
		t.Fatalf("Admit of two deliveries into one place = %v, want ErrBacklogFull", err)
	}
	// a lane is a BodyReader, as the engine expects
	app, analytics := s.Lane("app"), s.Lane("analytics")
	for _, lane := range []queue.Claimer{app, analytics} {
		got, err := lane.Claim(ctx, 10)
		if err != nil || len(got) == 0 || got[0].Payload != a.ID {
			t.Fatalf("Claim after reopen = %v, %v; want a delivery of %s first", got, err, a.ID)
		}
		r, ok := lane.(queue.BodyReader)
		if !ok {
			t.Fatal("a bolt lane is not a queue.BodyReader")
		}
		if body, err := r.ReadBody(ctx, got[0].ID); err != nil || !bytes.Equal(body, a.Body) {
			t.Fatalf("ReadBody(%s) = %q, %v", got[0].ID, body, err)
		}
		for _, e := range got {
			if err := lane.Ack(ctx, e.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openBolt(t, path, opts)
	dead, err := s.DeadEntry(ctx, d[0].ID)
	if err != nil || !bytes.Equal(dead.Body, a.Body) || dead.Payload != a.ID || dead.Destination != "archive" {
		t.Fatalf("DeadEntry(%s) after the others were delivered = %+v, %v; want a's body", d[0].ID, dead, err)
	}
	if st, err := s.Stats(ctx); err != nil || st.Stored != queue.StoredSize(len(a.Body), a.Request.Headers) || st.Lanes != nil {
		t.Fatalf("Stats = %+v, %v; want a's bytes only, no lane", st, err)
	}
	if err := s.DeleteDead(ctx, d[0].ID); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Stats(ctx); err != nil || st.Stored != 0 || st.Backlog != 0 || st.Dead != 0 {
		t.Fatalf("Stats after deleting the last delivery = %+v, %v; want nothing", st, err)
	}
}

// A damaged delivery of a fanned-out payload is handed out by its lane,
// with its lane's destination and its payload, so its dead letter keeps
// the shared body; the payload's other delivery is not affected.
func TestBoltDamagedDeliveryInALane(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "relay.db")
	opts := queue.Options{Window: time.Hour}
	s := openBolt(t, path, opts)
	a := &queue.Entry{Key: "a", Body: []byte(`{"k":"a"}`), Destinations: []string{"app", "archive"}}
	if _, err := s.Admit(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	damaged := queue.DeliveryID(a.ID, "app", false)
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		// app's lane: its keys start with the name's length and the name
		return tx.Bucket([]byte("queue")).Put(append([]byte("\x03app"), damaged...), []byte{0xff, 0x01})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = openBolt(t, path, opts)
	app, archive := s.Lane("app"), s.Lane("archive")
	got, err := app.Claim(ctx, 10)
	if err != nil || len(got) != 1 || got[0].ID != damaged || got[0].Damaged == "" ||
		got[0].Destination != "app" || got[0].Payload != a.ID || got[0].BodySize != len(a.Body) {
		t.Fatalf("app: Claim = %+v, %v; want %s damaged, of app and payload %s", got, err, damaged, a.ID)
	}
	got[0].LastError = got[0].Damaged
	if err := app.Bury(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	d, err := s.DeadEntry(ctx, damaged)
	if err != nil || d.Destination != "app" || d.Payload != a.ID || !bytes.Equal(d.Body, a.Body) {
		t.Fatalf("DeadEntry(%s) = %+v, %v; want app's letter with a's body", damaged, d, err)
	}
	if err := s.DeleteDead(ctx, damaged); err != nil {
		t.Fatal(err)
	}
	other, err := archive.Claim(ctx, 10)
	if err != nil || len(other) != 1 || other[0].Damaged != "" {
		t.Fatalf("archive: Claim = %+v, %v; want its delivery", other, err)
	}
	if body, err := archive.Body(ctx, other[0].ID); err != nil || !bytes.Equal(body, a.Body) {
		t.Fatalf("archive: Body = %q, %v; want a's", body, err)
	}
	if err := archive.Ack(ctx, other[0].ID); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Stats(ctx); err != nil || st.Stored != 0 || st.Backlog != 0 || st.Dead != 0 {
		t.Fatalf("Stats = %+v, %v; want nothing left", st, err)
	}
}
