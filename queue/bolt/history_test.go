package bolt_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/bolt"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

// A record is in the file: after a restart it is there with its attempt
// and body, and the next attempt adds to it.
func TestBoltHistorySurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	clock := storetest.NewClock()
	opts := queue.Options{Window: time.Hour, History: time.Hour, Now: clock.Now}
	first, err := bolt.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	storetest.HistorySurvives(t, clock, first, func() queue.Store {
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		return openBolt(t, path, opts)
	})
}

// bucketKeys counts the keys of each bucket named, in the closed file at
// path.
func bucketKeys(t *testing.T, path string, names ...string) map[string]int {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := make(map[string]int)
	_ = db.View(func(tx *bbolt.Tx) error {
		for _, name := range names {
			out[name] = tx.Bucket([]byte(name)).Stats().KeyN
		}
		return nil
	})
	return out
}

// Records are counted again at open, with their bytes; the index by Done
// follows the record (out on a resend, in again when delivered), and a
// trim leaves nothing of the payload in the file: no record, index entry,
// body or reference count.
func TestBoltRecordsCountedAtOpen(t *testing.T) {
	ctx := t.Context()
	clock := storetest.NewClock()
	opts := queue.Options{Window: time.Hour, History: time.Hour, Now: clock.Now}
	path := filepath.Join(t.TempDir(), "relay.db")
	s := openBolt(t, path, opts)
	e := &queue.Entry{Key: "a", Body: []byte(`{"k":"a"}`), Destinations: []string{"app", "archive"},
		Request: queue.RequestMeta{Headers: []queue.HeaderField{{Name: "Webhook-Id", Value: "a"}}}}
	if _, err := s.Admit(ctx, e); err != nil {
		t.Fatal(err)
	}
	deliver := func(s *bolt.Store, lane string) {
		t.Helper()
		l := s.Lane(lane)
		got, err := l.Claim(ctx, 1)
		if err != nil || len(got) != 1 {
			t.Fatalf("%s: Claim = %d, %v", lane, len(got), err)
		}
		a := queue.Attempt{Destination: lane, At: clock.Now(), Status: 200}
		if err := l.(queue.Recorder).Attempted(ctx, got[0], a, queue.StateDelivered); err != nil {
			t.Fatal(err)
		}
		if err := l.Ack(ctx, got[0].ID); err != nil {
			t.Fatal(err)
		}
	}
	deliver(s, "app")
	deliver(s, "archive")
	want := queue.StoredSize(len(e.Body), e.Request.Headers) + queue.RecordCharge
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := bucketKeys(t, path, "records", "doneAt", "bodies", "refs"); got["records"] != 1 || got["doneAt"] != 1 || got["bodies"] != 1 || got["refs"] != 0 {
		t.Fatalf("after both deliveries the file holds %v; want the record, its index entry and the body, held once", got)
	}

	s = openBolt(t, path, opts)
	if st, err := s.Stats(ctx); err != nil || st.Records != 1 || st.Stored != want {
		t.Fatalf("Stats after reopen = %+v, %v; want 1 record, stored %d", st, err, want)
	}
	if n, err := s.Resend(ctx, e.ID); err != nil || n != 2 {
		t.Fatalf("Resend = %d, %v; want 2", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := bucketKeys(t, path, "doneAt", "refs"); got["doneAt"] != 0 || got["refs"] != 1 {
		t.Fatalf("after the resend the file holds %v; want no index entry (not done) and the body held three times", got)
	}

	s = openBolt(t, path, opts)
	clock.Advance(time.Minute)
	deliver(s, "app")
	deliver(s, "archive")
	rec := s.Lane("app").(queue.Recorder)
	clock.Advance(time.Hour - time.Second)
	if n, err := rec.TrimHistory(ctx, 10); err != nil || n != 0 {
		t.Fatalf("TrimHistory before History ran out = %d, %v; want 0", n, err)
	}
	clock.Advance(time.Second)
	if n, err := rec.TrimHistory(ctx, 10); err != nil || n != 1 {
		t.Fatalf("TrimHistory = %d, %v; want 1", n, err)
	}
	if st, err := s.Stats(ctx); err != nil || st.Records != 0 || st.Stored != 0 {
		t.Fatalf("Stats after the trim = %+v, %v; want nothing", st, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := bucketKeys(t, path, "records", "doneAt", "bodies", "refs"); got["records"]+got["doneAt"]+got["bodies"]+got["refs"] != 0 {
		t.Fatalf("after the trim the file holds %v; want nothing", got)
	}
	s = openBolt(t, path, opts)
	if st, err := s.Stats(ctx); err != nil || st.Records != 0 || st.Stored != 0 {
		t.Fatalf("Stats after the trim and a reopen = %+v, %v; want nothing", st, err)
	}
}

// runwareBody is a Runware image result of about 300 bytes, as
// storetest.Bench admits.
var runwareBody = []byte(`{"data":[{"taskType":"imageInference","taskUUID":"a770f077-f413-47de-9dac-be0b26a35da6",` +
	`"imageUUID":"77da2d99-a6d3-44d9-b8c0-ae9fb06b6200","imageURL":"https://im.runware.ai/image/ws/0.5/ii/` +
	`77da2d99-a6d3-44d9-b8c0-ae9fb06b6200.jpg","seed":1234567890,"NSFWContent":false,"cost":0.0013}]}`)

const recordCount = 1000

// BenchmarkRecordBytes reports what the record of a delivered 300-byte
// Runware payload with one destination and three attempts (two 503s, then
// a 200) costs in the bolt file, for sizing history against a rate:
// bytes/record counts the pages of the records, their index, the bodies
// they keep and the reference counts; record-only-bytes/record leaves the
// bodies out. It measures once whatever b.N is.
func BenchmarkRecordBytes(b *testing.B) {
	ctx := b.Context()
	clock := storetest.NewClock()
	path := filepath.Join(b.TempDir(), "relay.db")
	s := openBolt(b, path, queue.Options{Window: 24 * time.Hour, History: 24 * time.Hour, Now: clock.Now})
	meta := queue.RequestMeta{ContentType: "application/json", UserAgent: "Runware", ForwardedFor: "192.0.2.1"}
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := w; i < recordCount; i += 32 {
				e := &queue.Entry{Key: storetest.RunwareKey(i), Body: runwareBody, Request: meta, Destination: "app"}
				if a, err := s.Admit(ctx, e); err != nil || a != queue.Accepted {
					b.Errorf("Admit: %v %v", a, err)
				}
			}
		})
	}
	wg.Wait()
	lane := s.Lane("app")
	rec := lane.(queue.Recorder)
	for attempt := 1; attempt <= 3; attempt++ {
		got, err := lane.Claim(ctx, recordCount)
		if err != nil || len(got) != recordCount {
			b.Fatalf("attempt %d: claimed %d, %v", attempt, len(got), err)
		}
		var wg sync.WaitGroup
		for w := range 32 {
			wg.Go(func() {
				for i := w; i < len(got); i += 32 {
					e := got[i]
					a := queue.Attempt{Destination: "app", At: clock.Now(), Status: 503, DurationMS: 1234, Error: "upstream answered 503"}
					if attempt == 3 {
						a.Status, a.Error = 200, ""
						_ = rec.Attempted(ctx, e, a, queue.StateDelivered)
						if err := lane.Ack(ctx, e.ID); err != nil {
							b.Error(err)
						}
						continue
					}
					_ = rec.Attempted(ctx, e, a, queue.StateRetrying)
					e.Attempts = attempt
					if err := lane.Retry(ctx, e, clock.Now()); err != nil {
						b.Error(err)
					}
				}
			})
		}
		wg.Wait()
		clock.Advance(time.Minute)
	}
	if st, err := s.Stats(ctx); err != nil || st.Records != recordCount || st.Backlog != 0 {
		b.Fatalf("Stats = %+v, %v; want %d records and an empty backlog", st, err, recordCount)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	used := map[string]int{}
	_ = db.View(func(tx *bbolt.Tx) error {
		for _, name := range []string{"records", "doneAt", "bodies", "refs"} {
			st := tx.Bucket([]byte(name)).Stats()
			used[name] = st.BranchInuse + st.LeafInuse
		}
		return nil
	})
	all := used["records"] + used["doneAt"] + used["bodies"] + used["refs"]
	b.ReportMetric(float64(all)/recordCount, "bytes/record")
	b.ReportMetric(float64(used["records"]+used["doneAt"])/recordCount, "record-only-bytes/record")
}

// BenchmarkBoltAdmitHistory is BenchmarkBoltAdmit with history on: each
// admit writes the payload's record too.
func BenchmarkBoltAdmitHistory(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) queue.Store {
		return openBolt(b, filepath.Join(b.TempDir(), "relay.db"), queue.Options{Window: 24 * time.Hour, History: 24 * time.Hour})
	})
}

// BenchmarkBoltAttemptAck measures the end of a delivery with history on,
// as the engine does it: Attempted, then Ack, by 1 and 16 workers at once
// (the payloads are admitted before the timer starts).
func BenchmarkBoltAttemptAck(b *testing.B) {
	for _, workers := range []int{1, 16} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			ctx := b.Context()
			s := openBolt(b, filepath.Join(b.TempDir(), "relay.db"), queue.Options{Window: 24 * time.Hour, History: 24 * time.Hour})
			var wg sync.WaitGroup
			for w := range 32 {
				wg.Go(func() {
					for i := w; i < b.N; i += 32 {
						e := &queue.Entry{Key: storetest.RunwareKey(i), Body: runwareBody, Destination: "app"}
						if _, err := s.Admit(ctx, e); err != nil {
							b.Error(err)
						}
					}
				})
			}
			wg.Wait()
			lane := s.Lane("app")
			got, err := lane.Claim(ctx, b.N)
			if err != nil || len(got) != b.N {
				b.Fatalf("claimed %d, %v", len(got), err)
			}
			rec := lane.(queue.Recorder)
			b.ResetTimer()
			for w := range workers {
				wg.Go(func() {
					for i := w; i < len(got); i += workers {
						a := queue.Attempt{Destination: "app", At: time.Now(), Status: 200, DurationMS: 80}
						if err := rec.Attempted(ctx, got[i], a, queue.StateDelivered); err != nil {
							b.Error(err)
						}
						if err := lane.Ack(ctx, got[i].ID); err != nil {
							b.Error(err)
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

// Attempted does not wait for its commit, but the Ack that follows it
// from the same goroutine commits after it: once the Ack returns, the
// record has the attempt, however the concurrent calls were grouped.
func TestBoltAttemptedCommitsBeforeTheAck(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, filepath.Join(t.TempDir(), "relay.db"), queue.Options{Window: time.Hour, History: time.Hour})
	const n = 200
	for i := range n {
		if _, err := s.Admit(ctx, &queue.Entry{Key: storetest.RunwareKey(i), Body: runwareBody, Destination: "app"}); err != nil {
			t.Fatal(err)
		}
	}
	lane := s.Lane("app")
	got, err := lane.Claim(ctx, n)
	if err != nil || len(got) != n {
		t.Fatalf("claimed %d, %v", len(got), err)
	}
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				e := got[i]
				a := queue.Attempt{Destination: "app", At: time.Now(), Status: 200}
				if err := lane.(queue.Recorder).Attempted(ctx, e, a, queue.StateDelivered); err != nil {
					t.Error(err)
				}
				if err := lane.Ack(ctx, e.ID); err != nil {
					t.Error(err)
				}
				r, err := s.Event(ctx, e.Payload)
				if err != nil {
					t.Errorf("Event(%s): %v", e.Payload, err)
				} else if r.State != queue.StateDelivered || len(r.Attempts) != 1 {
					t.Errorf("Event(%s) after the Ack: %s with %d attempts; want delivered with its attempt", e.Payload, r.State, len(r.Attempts))
				}
			}
		})
	}
	wg.Wait()
}

// Under max_stored the done record that gives way is the one done first,
// not the one admitted first: eviction goes by the index of Done.
func TestBoltOldestDoneGivesWay(t *testing.T) {
	ctx := t.Context()
	clock := storetest.NewClock()
	const body = 1000
	per := int64(body) + queue.RecordCharge
	s := openBolt(t, filepath.Join(t.TempDir(), "relay.db"),
		queue.Options{Window: time.Hour, History: time.Hour, MaxStored: 3 * per, Now: clock.Now})
	admit := func(key string) *queue.Entry {
		t.Helper()
		e := &queue.Entry{Key: key, Body: make([]byte, body), Destination: "app"}
		if a, err := s.Admit(ctx, e); err != nil || a != queue.Accepted {
			t.Fatalf("Admit(%s) = %v, %v", key, a, err)
		}
		return e
	}
	ids := []*queue.Entry{admit("a"), admit("b"), admit("c")}
	lane := s.Lane("app")
	got, err := lane.Claim(ctx, 3)
	if err != nil || len(got) != 3 {
		t.Fatalf("claimed %d, %v", len(got), err)
	}
	// done in the order c, a, b
	for _, i := range []int{2, 0, 1} {
		clock.Advance(time.Second)
		a := queue.Attempt{Destination: "app", At: clock.Now(), Status: 200}
		if err := lane.(queue.Recorder).Attempted(ctx, got[i], a, queue.StateDelivered); err != nil {
			t.Fatal(err)
		}
		if err := lane.Ack(ctx, got[i].ID); err != nil {
			t.Fatal(err)
		}
	}
	admit("d")
	if _, err := s.Event(ctx, ids[2].ID); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("c's record, done first: %v; want it gone", err)
	}
	for _, e := range ids[:2] {
		if _, err := s.Event(ctx, e.ID); err != nil {
			t.Errorf("%s's record: %v; want it kept", e.Key, err)
		}
	}
	if st, err := s.Stats(ctx); err != nil || st.Records != 3 || st.Stored != 3*per {
		t.Errorf("Stats = %+v, %v; want 3 records, stored %d", st, err, 3*per)
	}
}
