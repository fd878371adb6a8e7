package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

const boltReplayBatch = 256 // dead letters replayed per transaction

// Dead implements Store.
func (b *Store) Dead(ctx context.Context, after string, limit int) ([]*queue.Entry, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	out := []*queue.Entry{}
	err := b.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(boltDead).Cursor()
		k, v := c.First()
		if after != "" {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil && len(out) < limit; k, v = c.Next() {
			e, err := boltDecode(v)
			if err != nil {
				// listed all the same, so an operator can see and delete it
				e = &queue.Entry{ID: string(k), LastError: fmt.Sprintf("the stored record of this dead letter cannot be read: %v", err)}
			}
			e.BodySize = len(tx.Bucket(boltBodies).Get([]byte(boltPayload(string(k), v))))
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, b.storeErr(err)
	}
	return out, nil
}

// DeadEntry implements Store.
func (b *Store) DeadEntry(ctx context.Context, id string) (*queue.Entry, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	var e *queue.Entry
	err := b.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(boltDead).Get([]byte(id))
		if v == nil {
			return nil
		}
		var err error
		if e, err = boltDecode(v); err != nil {
			return fmt.Errorf("dead letter %s: %w", id, err)
		}
		e.Body = bytes.Clone(tx.Bucket(boltBodies).Get([]byte(boltPayload(id, v))))
		if e.Body == nil {
			e.Body = []byte{}
		}
		return nil
	})
	if err != nil {
		return nil, b.storeErr(err)
	}
	if e == nil {
		return nil, fmt.Errorf("dead letter %s: %w", id, queue.ErrNotFound)
	}
	return e, nil
}

// DeleteDead implements Store. The body goes with the payload's last
// delivery.
func (b *Store) DeleteDead(ctx context.Context, id string) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	var found bool
	err := b.write(func(tx *bbolt.Tx) error {
		found = false
		v := tx.Bucket(boltDead).Get([]byte(id))
		if v == nil {
			return nil
		}
		found = true
		return boltDeleteDead(tx, id, v)
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("dead letter %s: %w", id, queue.ErrNotFound)
	}
	b.count("", 0, -1)
	return nil
}

// boltDeleteDead removes dead letter id (its record v), its hold on its
// payload's body and its place in the index by death.
func boltDeleteDead(tx *bbolt.Tx, id string, v []byte) error {
	if _, err := boltUnref(tx, id, v); err != nil {
		return err
	}
	if e, err := boltDecode(v); err == nil {
		if err := tx.Bucket(boltDeadAt).Delete(boltDeadAtKey(e.Died, id)); err != nil {
			return err
		}
	}
	return tx.Bucket(boltDead).Delete([]byte(id))
}

// TrimDead implements Store, in one transaction of at most limit letters.
func (b *Store) TrimDead(ctx context.Context, max int, cutoff time.Time, limit int) ([]*queue.Entry, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	b.countMu.Lock()
	dead := b.dead
	b.countMu.Unlock()
	var out []*queue.Entry
	err := b.db.Update(func(tx *bbolt.Tx) error {
		out = out[:0]
		deadBk := tx.Bucket(boltDead)
		c := tx.Bucket(boltDeadAt).Cursor()
		var gone [][]byte
		for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
			if len(k) < 8 {
				gone = append(gone, bytes.Clone(k))
				continue
			}
			old := !cutoff.IsZero() && int64(binary.BigEndian.Uint64(k[:8])) < cutoff.UnixNano()
			if !old && (max <= 0 || dead-len(out) <= max) {
				break
			}
			id := string(k[8:])
			gone = append(gone, bytes.Clone(k))
			v := deadBk.Get([]byte(id))
			if v == nil {
				continue // an index entry left behind
			}
			e, err := boltDecode(v)
			if err != nil {
				e = &queue.Entry{ID: id, Payload: boltPayloadOf(id)}
			}
			e.BodySize = len(tx.Bucket(boltBodies).Get([]byte(boltPayload(id, v))))
			if _, err := boltUnref(tx, id, v); err != nil {
				return err
			}
			if err := deadBk.Delete([]byte(id)); err != nil {
				return err
			}
			out = append(out, e)
		}
		for _, k := range gone {
			if err := c.Bucket().Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, b.storeErr(err)
	}
	b.count("", 0, -len(out))
	return out, nil
}

// Replay implements Store. It ignores MaxBacklog: replaying is an
// operator's decision. Replayed deliveries join the back of their
// destination's lane under a new queue key and keep their ID. It commits
// boltReplayBatch letters at a time, so admits wait for one short commit at
// most, never for the whole replay.
func (b *Store) Replay(ctx context.Context, ids []string) (int, error) {
	if err := b.usable(ctx); err != nil {
		return 0, err
	}
	all := ids == nil
	total := 0
	for {
		var batch []string
		if all {
			// what was replayed is gone from the front of the bucket
			if err := b.db.View(func(tx *bbolt.Tx) error {
				c := tx.Bucket(boltDead).Cursor()
				for k, _ := c.First(); k != nil && len(batch) < boltReplayBatch; k, _ = c.Next() {
					batch = append(batch, string(k))
				}
				return nil
			}); err != nil {
				return total, b.storeErr(err)
			}
		} else {
			batch = ids[:min(len(ids), boltReplayBatch)]
			ids = ids[len(batch):]
		}
		if len(batch) == 0 {
			return total, nil
		}
		n, err := b.replay(batch)
		total += n
		if err != nil {
			return total, err
		}
		if all && n == 0 {
			return total, nil // nothing that could be replayed is left
		}
		if err := b.usable(ctx); err != nil {
			return total, err
		}
	}
}

// replay puts the dead letters in ids back in their lanes, in one commit.
func (b *Store) replay(ids []string) (int, error) {
	now := b.now()
	var n int
	lanes := make(map[string]int)
	err := b.write(func(tx *bbolt.Tx) error {
		n = 0
		clear(lanes)
		dead := tx.Bucket(boltDead)
		qb := tx.Bucket(boltQueue)
		requeued := tx.Bucket(boltRequeued)
		for _, id := range ids {
			v := dead.Get([]byte(id))
			if v == nil {
				continue
			}
			e, err := boltDecode(v)
			if err != nil {
				// the body is what matters, and it is intact; with no
				// destination to read it goes to the store's own lane
				e = &queue.Entry{ID: id, Payload: boltPayloadOf(id)}
			}
			if err := tx.Bucket(boltDeadAt).Delete(boltDeadAtKey(e.Died, id)); err != nil {
				return err
			}
			e.Attempts, e.LastStatus, e.LastError = 0, 0, ""
			e.Queued, e.Died = now, time.Time{}
			if e.Received.IsZero() {
				e.Received = now
			}
			seq, err := qb.NextSequence()
			if err != nil {
				return err
			}
			qk := boltLaneKey(e.Destination, boltID(seq))
			if err := qb.Put(qk, boltEncode(e)); err != nil {
				return err
			}
			if err := requeued.Put([]byte(id), qk); err != nil {
				return err
			}
			if err := dead.Delete([]byte(id)); err != nil {
				return err
			}
			if err := boltUpdateRecord(tx, e.Payload, func(r *queue.Record) bool { return r.Requeued(id) }); err != nil {
				return err
			}
			lanes[e.Destination]++
			n++
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for lane, k := range lanes {
		b.count(lane, k, -k)
	}
	return n, nil
}
