package bolt_test

import (
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/storetest"
)

// BenchmarkAdmit: bolt's admit (ack) latency at 1, 16 and 64 concurrent
// admits, one fsynced commit shared by the admits that arrive together.
func BenchmarkAdmit(b *testing.B) {
	storetest.BenchConcurrency(b, func(b *testing.B) queue.Store {
		return openBolt(b, filepath.Join(b.TempDir(), "relay.db"), queue.Options{Window: 24 * time.Hour})
	})
}

// BenchmarkMarkerBytes reports what one dedupe marker of a Runware key costs
// in the bolt file (bytes/marker), for sizing window against a rate. It
// counts the pages the two marker buckets use, not the file's size, which
// also holds the freed pages of the delivered payloads. It measures once
// whatever b.N is.
func BenchmarkMarkerBytes(b *testing.B) {
	path := filepath.Join(b.TempDir(), "relay.db")
	s := openBolt(b, path, queue.Options{Window: 24 * time.Hour})
	storetest.FillMarkers(b, s)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	used := 0
	_ = db.View(func(tx *bbolt.Tx) error {
		for _, name := range []string{"seen", "expiry"} {
			st := tx.Bucket([]byte(name)).Stats()
			used += st.BranchInuse + st.LeafInuse
		}
		return nil
	})
	b.ReportMetric(float64(used)/storetest.MarkerCount, "bytes/marker")
}
