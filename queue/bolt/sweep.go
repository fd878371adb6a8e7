package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"time"

	"go.etcd.io/bbolt"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

const boltSweepBatch = 1000 // markers deleted per sweep transaction

// sweeper deletes expired markers now and then, so that the file does not
// grow without bound under a steady stream of new keys. A panic (bbolt's,
// on a damaged page, say) is logged with its stack and ends that sweep; its
// transaction is rolled back, and the next tick sweeps again.
func (b *Store) sweeper() {
	defer b.bgDone.Done()
	every := min(max(b.Window()/4, time.Second), time.Minute)
	if b.hooks.sweepEvery > 0 {
		every = b.hooks.sweepEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
			guard.Run(b.logger, "the bolt store's sweep of expired markers", func() { _, _ = b.sweep() })
		}
	}
}

// Sweep deletes the seen markers that expired by the store's clock, at most
// a thousand per transaction, and reports how many it deleted. The store
// sweeps by itself in the background (every window/4, at least every
// minute); calling it is only needed to sweep at a chosen moment, as tests
// do with a fake clock.
func (b *Store) Sweep(ctx context.Context) (int, error) {
	if err := b.usable(ctx); err != nil {
		return 0, err
	}
	return b.sweep()
}

// sweep is Sweep without the checks.
func (b *Store) sweep() (int, error) {
	total := 0
	for {
		select {
		case <-b.done:
			return total, queue.ErrClosed
		default:
		}
		now := uint64(b.now().UnixNano())
		n, unmarked := 0, 0
		err := b.db.Update(func(tx *bbolt.Tx) error {
			n, unmarked = 0, 0
			if b.hooks.sweep != nil {
				b.hooks.sweep()
			}
			expiry := tx.Bucket(boltExpiry)
			seen := tx.Bucket(boltSeen)
			var expired [][]byte
			c := expiry.Cursor()
			for k, _ := c.First(); k != nil && len(expired) < b.sweepMax; k, _ = c.Next() {
				if len(k) < 8 || binary.BigEndian.Uint64(k[:8]) > now {
					break
				}
				expired = append(expired, bytes.Clone(k))
			}
			for _, k := range expired {
				if err := expiry.Delete(k); err != nil {
					return err
				}
				// the key may have been admitted again since: that
				// marker is newer and stays
				mk := k[8:]
				if bytes.Equal(seen.Get(mk), k[:8]) {
					if err := seen.Delete(mk); err != nil {
						return err
					}
					unmarked++
				}
			}
			n = len(expired)
			return nil
		})
		total += n
		if err != nil {
			return total, b.storeErr(err)
		}
		b.countKeys(-unmarked)
		if n < b.sweepMax {
			return total, nil
		}
	}
}
