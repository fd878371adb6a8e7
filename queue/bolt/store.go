package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// Store is a queue.Store kept in one bbolt file, for a single Caddy instance with
// no extra service. Every Admit is committed (fsync) before it returns, so
// an accepted payload survives a crash, kill -9 or a power cut, but not the
// loss of the disk. Admits that arrive together share one commit.
//
// Only one process can hold the file at a time; a second one fails at Open.
// Claims live in the process: after a restart nothing is claimed and every
// queued payload is handed out again.
type Store struct {
	db   *bbolt.DB
	path string
	now  func() time.Time
	queue.Limits

	closed   atomic.Bool
	closeMu  sync.Mutex
	commits  chan *boltCommit
	done     chan struct{} // closed by Close: stops the committer and the sweeper
	bgDone   sync.WaitGroup
	sweepMax int // markers deleted per sweep transaction

	// counts: backlog is queued entries, admitted ones reserved before
	// their commit so the bound is never overshot; dead is dead letters.
	countMu sync.Mutex
	backlog int
	dead    int
	keys    int // markers in the seen bucket, expired ones not yet swept included

	// claims holds the ids of claimed entries. Every queued entry whose
	// queue key sorts before claimFrom is claimed, so Claim starts there
	// instead of stepping over all the held entries at the front of the
	// queue each time; Release, the one way back to unclaimed, resets it.
	claimMu   sync.Mutex
	claims    map[string]struct{}
	claimFrom []byte

	// release lets go of the file in the process's table of bolt files
	// (set by Backend.OpenStore); Close calls it.
	release func()

	// evicted is queue.Options.Evicted.
	evicted func(n int)

	// logger gets the panics of the background goroutines.
	logger *zap.Logger
	hooks  testHooks
}

// testHooks let in-package tests break the background goroutines; all nil
// or zero outside them.
type testHooks struct {
	// commit runs in every group commit's transaction, after its calls.
	commit func()
	// sweep runs in every sweep transaction.
	sweep func()
	// sweepEvery replaces the background sweep's interval.
	sweepEvery time.Duration
}

// Bucket names. The queue is ordered by queue key: an entry's own ID when it
// was admitted, a fresh sequence number when it was replayed (requeued maps
// its ID to that key), so the queue's first key is always its oldest entry.
var (
	boltMeta     = []byte("meta")
	boltQueue    = []byte("queue")    // queue key -> entry (no body)
	boltRequeued = []byte("requeued") // id -> queue key, for replayed entries
	boltBodies   = []byte("bodies")   // id -> body, queued or dead
	boltSeen     = []byte("seen")     // marker key -> expiry
	boltExpiry   = []byte("expiry")   // expiry + marker key -> nothing
	boltDead     = []byte("dead")     // id -> entry (no body)
	boltDeadAt   = []byte("deadAt")   // died (Unix ns) + id -> nothing, oldest first
	// Entries put off by Retry stay in the queue bucket and are indexed by
	// when they are due, so Claim finds the due ones without stepping over
	// those that wait. An entry is in both or neither.
	boltWaiting = []byte("waiting") // due (Unix ns) + id -> nothing, earliest first
	boltDueOf   = []byte("dueOf")   // id -> due (Unix ns), for entries in waiting

	boltFormatKey = []byte("format")
	boltFormat    = []byte("webhook_relay/bolt/5")
)

func (b *Store) usable(ctx context.Context) error {
	if b.closed.Load() {
		return queue.ErrClosed
	}
	return ctx.Err()
}

// storeErr maps bbolt's "closed" onto ErrClosed (Close may have run between
// the check in usable and the transaction) and names the file otherwise.
func (b *Store) storeErr(err error) error {
	if err == nil || errors.Is(err, queue.ErrClosed) {
		return err
	}
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) || b.closed.Load() {
		return queue.ErrClosed
	}
	return fmt.Errorf("bolt store %s: %w", b.path, err)
}

// reserve counts one more queued entry unless the backlog is full.
func (b *Store) reserve() bool {
	b.countMu.Lock()
	defer b.countMu.Unlock()
	if max := b.MaxBacklog(); max > 0 && b.backlog >= max {
		return false
	}
	b.backlog++
	return true
}

func (b *Store) countKeys(n int) {
	b.countMu.Lock()
	defer b.countMu.Unlock()
	b.keys += n
}

func (b *Store) count(backlog, dead int) {
	b.countMu.Lock()
	defer b.countMu.Unlock()
	b.backlog += backlog
	b.dead += dead
}

// Admit implements Store. The seen check, the backlog check, the max_stored
// check with the dead letters that give way to it, the payload and the
// marker are one transaction, committed to disk before Admit returns.
// The backlog is checked against a count kept in memory: an accepted entry
// reserves its place before its commit, so concurrent admits never overshoot
// MaxBacklog.
func (b *Store) Admit(ctx context.Context, e *queue.Entry) (queue.Admission, error) {
	if err := b.usable(ctx); err != nil {
		return 0, err
	}
	now := b.now()
	nowNS := now.UnixNano()
	expires := now.Add(b.Window()).UnixNano()
	mk := boltMarkerKey(e.Key)
	meta := queue.Entry{Key: e.Key, Destination: e.Destination, Request: e.Request, Received: now, Queued: now}
	body := e.Body

	size := queue.StoredSize(len(body), e.Request.Headers)

	var (
		outcome   queue.Admission
		full      bool
		storeFull bool
		evicted   int
		id        string
		reserved  bool
		newMarker bool
	)
	err := b.writeSized(len(body), func(tx *bbolt.Tx) error {
		outcome, full, storeFull, evicted, id = 0, false, false, 0, ""
		seen := tx.Bucket(boltSeen)
		v := seen.Get(mk)
		newMarker = v == nil
		if len(v) == 8 && nowNS < int64(binary.BigEndian.Uint64(v)) {
			if reserved { // decided otherwise in an earlier run
				b.count(-1, 0)
				reserved = false
			}
			outcome = queue.Duplicate
			return nil
		}
		if e.MarkerOnly {
			// the marker alone: nothing queued, reserved or counted
			outcome = queue.Accepted
			return boltPutMarker(tx, mk, expires)
		}
		if !reserved {
			if !b.reserve() {
				// full is decided here, in the transaction that would
				// have stored it; the key is not marked
				full = true
				return nil
			}
			reserved = true
		}
		stored := boltStored(tx)
		if bound := b.MaxStored(); bound > 0 && stored+size > bound {
			// the oldest dead letters give way, in this transaction, and
			// stay removed even if that is not enough
			n, freed, err := boltEvict(tx, stored+size-bound)
			if err != nil {
				return err
			}
			evicted, stored = n, max(stored-freed, 0)
			if err := boltAddStored(tx, -freed); err != nil {
				return err
			}
			if stored+size > bound {
				storeFull = true
				return nil
			}
		}
		if err := boltAddStored(tx, size); err != nil {
			return err
		}
		qb := tx.Bucket(boltQueue)
		seq, err := qb.NextSequence()
		if err != nil {
			return err
		}
		id = boltID(seq)
		m := meta
		m.ID = id
		if err := qb.Put([]byte(id), boltEncode(&m)); err != nil {
			return err
		}
		if err := tx.Bucket(boltBodies).Put([]byte(id), body); err != nil {
			return err
		}
		// the payload is written before the marker; in one transaction
		// the order does not matter, but it reads as the rule it is
		if err := boltPutMarker(tx, mk, expires); err != nil {
			return err
		}
		outcome = queue.Accepted
		return nil
	})
	if err != nil || outcome != queue.Accepted {
		if reserved {
			b.count(-1, 0)
		}
	}
	if err == nil && evicted > 0 {
		b.count(0, -evicted)
		if b.evicted != nil {
			b.evicted(evicted)
		}
	}
	switch {
	case err != nil:
		return 0, err
	case full:
		return 0, queue.ErrBacklogFull
	case storeFull:
		return 0, queue.ErrStoreFull
	case outcome == queue.Accepted && e.MarkerOnly:
		if newMarker {
			b.countKeys(1)
		}
	case outcome == queue.Accepted:
		e.ID, e.Received, e.Queued = id, now, now
		if newMarker {
			b.countKeys(1)
		}
	}
	return outcome, nil
}

// boltPutMarker marks mk seen until expires (Unix ns), and indexes the
// marker by its expiry for the sweep.
func boltPutMarker(tx *bbolt.Tx, mk []byte, expires int64) error {
	exp := binary.BigEndian.AppendUint64(nil, uint64(expires))
	if err := tx.Bucket(boltSeen).Put(mk, exp); err != nil {
		return err
	}
	return tx.Bucket(boltExpiry).Put(append(exp, mk...), nil)
}

// boltQueueKey finds where entry id sits in the queue, or nil when it is not
// queued. A damaged record, whose id cannot be read, goes by its queue key.
func boltQueueKey(tx *bbolt.Tx, id string) []byte {
	qk := []byte(id)
	if k := tx.Bucket(boltRequeued).Get(qk); k != nil {
		qk = bytes.Clone(k)
	}
	v := tx.Bucket(boltQueue).Get(qk)
	if v == nil {
		return nil
	}
	if got := boltEntryID(v); got != id && (got != "" || string(qk) != id) {
		return nil
	}
	return qk
}

// Claim implements Store. Claims live in this process until Ack, Bury,
// Retry or Release; after a restart nothing is claimed. It merges two
// ordered walks: the waiting index up to now (entries put off by Retry,
// by due time) and the queue from claimFrom (the others, due since they
// were queued), taking the earlier due of the two each time.
func (b *Store) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	now := b.now().UnixNano()
	var out []*queue.Entry
	err := b.db.View(func(tx *bbolt.Tx) error {
		bodies, queued, dueOf := tx.Bucket(boltBodies), tx.Bucket(boltQueue), tx.Bucket(boltDueOf)
		out = out[:0]
		read := func(k, v []byte) *queue.Entry {
			id := boltEntryID(v)
			if id == "" {
				id = string(k) // damaged: it goes by its queue key
			}
			e, err := boltDecode(v)
			if err != nil {
				e = &queue.Entry{ID: id, Damaged: fmt.Sprintf("the stored record of queued entry %s cannot be read: %v", k, err)}
			}
			e.BodySize = len(bodies.Get([]byte(e.ID)))
			return e
		}

		// the next due entry of the waiting index, nobody's
		wc := tx.Bucket(boltWaiting).Cursor()
		var wait *queue.Entry
		var waitDue int64
		wk, _ := wc.First()
		nextWaiting := func() {
			for wait = nil; wk != nil && len(wk) > 8; wk, _ = wc.Next() {
				waitDue = int64(binary.BigEndian.Uint64(wk))
				if waitDue > now {
					wk = nil
					return
				}
				id := string(wk[8:])
				if _, held := b.claims[id]; held {
					continue
				}
				qk := boltQueueKey(tx, id)
				if qk == nil {
					continue // not queued: the index is put right when it is written next
				}
				wait = read(qk, queued.Get(qk))
				wk, _ = wc.Next()
				return
			}
		}

		// the next entry of the queue from claimFrom, nobody's and not
		// waiting; everything before claimFrom is either
		qc := queued.Cursor()
		var fresh *queue.Entry
		var freshKey, last []byte
		qk, qv := qc.First()
		if b.claimFrom != nil {
			qk, qv = qc.Seek(b.claimFrom)
		}
		nextFresh := func() {
			for fresh = nil; qk != nil; qk, qv = qc.Next() {
				last = qk
				id := boltEntryID(qv)
				if id == "" {
					id = string(qk)
				}
				if _, held := b.claims[id]; held || dueOf.Get([]byte(id)) != nil {
					continue
				}
				fresh, freshKey = read(qk, qv), bytes.Clone(qk)
				qk, qv = qc.Next()
				return
			}
		}

		nextWaiting()
		nextFresh()
		for len(out) < max && (wait != nil || fresh != nil) {
			if fresh == nil || (wait != nil && waitDue <= fresh.Queued.UnixNano()) {
				out, wait = append(out, wait), nil
				if len(out) < max {
					nextWaiting()
				}
				continue
			}
			out, fresh = append(out, fresh), nil
			if len(out) < max {
				nextFresh()
			}
		}
		switch {
		case fresh != nil:
			// looked at but not taken: the next claim starts at it
			b.claimFrom = freshKey
		case last != nil:
			// appending a zero byte makes the smallest key after last
			b.claimFrom = append(bytes.Clone(last), 0)
		}
		return nil
	})
	if err != nil {
		b.claimFrom = nil
		return nil, b.storeErr(err)
	}
	for _, e := range out {
		b.claims[e.ID] = struct{}{}
	}
	return out, nil
}

// Body implements Store.
func (b *Store) Body(ctx context.Context, id string) ([]byte, error) {
	return b.body(ctx, id, func(n int) []byte { return make([]byte, n) })
}

// ReadBody implements queue.BodyReader: a large body is copied out of the
// memory map into a mapping of bodybuf rather than onto the heap.
func (b *Store) ReadBody(ctx context.Context, id string) ([]byte, error) {
	return b.body(ctx, id, bodybuf.Alloc)
}

// body reads id's body into a buffer of alloc.
func (b *Store) body(ctx context.Context, id string, alloc func(int) []byte) ([]byte, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	var body []byte
	err := b.db.View(func(tx *bbolt.Tx) error {
		if boltQueueKey(tx, id) == nil {
			return nil
		}
		// a copy: the value lives in the memory map only as long as tx
		v := tx.Bucket(boltBodies).Get([]byte(id))
		body = alloc(len(v))
		copy(body, v)
		return nil
	})
	if err != nil {
		bodybuf.Free(body)
		return nil, b.storeErr(err)
	}
	if body == nil {
		return nil, fmt.Errorf("body of %s: %w", id, queue.ErrNotFound)
	}
	return body, nil
}

// Extend implements Store. In-process claims never time out, so there is
// nothing to extend; it only reports ids that are not queued.
func (b *Store) Extend(ctx context.Context, ids []string) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	var missing string
	err := b.db.View(func(tx *bbolt.Tx) error {
		for _, id := range ids {
			if boltQueueKey(tx, id) == nil {
				missing = id
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return b.storeErr(err)
	}
	if missing != "" {
		return fmt.Errorf("extending %s: %w", missing, queue.ErrNotFound)
	}
	return nil
}

// updateQueued runs fn, in one write transaction, on the queued entry e.ID
// with e's attempt record applied. It reports whether the entry was queued.
// A stored record that cannot be read is replaced by what e says.
func (b *Store) updateQueued(e *queue.Entry, fn func(tx *bbolt.Tx, qk []byte, stored *queue.Entry) error) (bool, error) {
	id, attempts, status, reason := e.ID, e.Attempts, e.LastStatus, e.LastError
	fallback := *e
	fallback.Body = nil
	var found bool
	err := b.write(func(tx *bbolt.Tx) error {
		found = false // the function may run again (group commit)
		qk := boltQueueKey(tx, id)
		if qk == nil {
			return nil
		}
		stored, err := boltDecode(tx.Bucket(boltQueue).Get(qk))
		if err != nil {
			f := fallback
			stored = &f
		}
		stored.Attempts, stored.LastStatus, stored.LastError = attempts, status, reason
		if err := fn(tx, qk, stored); err != nil {
			return err
		}
		found = true
		return nil
	})
	return found, err
}

// Ack implements Store. The payload is deleted; its marker stays until the
// window ends. Acking an id that is no longer queued is not an error.
func (b *Store) Ack(ctx context.Context, id string) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	var found bool
	err := b.write(func(tx *bbolt.Tx) error {
		found = false
		qk := boltQueueKey(tx, id)
		if qk == nil {
			return nil
		}
		found = true
		if err := boltAddStored(tx, -boltSizeOf(tx, id, tx.Bucket(boltQueue).Get(qk))); err != nil {
			return err
		}
		return boltDelete(tx, qk, id, boltBodies)
	})
	if err != nil {
		return err
	}
	b.unclaim(id)
	if found {
		b.count(-1, 0)
	}
	return nil
}

// boltDelete takes entry id (at queue key qk) out of the queue and the
// waiting index, and out of the other buckets named.
func boltDelete(tx *bbolt.Tx, qk []byte, id string, others ...[]byte) error {
	if err := tx.Bucket(boltQueue).Delete(qk); err != nil {
		return err
	}
	if err := boltUnwait(tx, id); err != nil {
		return err
	}
	others = append(others, boltRequeued)
	for _, name := range others {
		if err := tx.Bucket(name).Delete([]byte(id)); err != nil {
			return err
		}
	}
	return nil
}

func (b *Store) unclaim(ids ...string) {
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	for _, id := range ids {
		delete(b.claims, id)
	}
}

// Bury implements Store. It buries the stored entry, not e, so a caller
// holding a stale copy cannot change the body or key of a dead letter. The
// body stays where it is.
func (b *Store) Bury(ctx context.Context, e *queue.Entry) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	id := e.ID
	died := b.now()
	found, err := b.updateQueued(e, func(tx *bbolt.Tx, qk []byte, stored *queue.Entry) error {
		stored.Died = died
		if err := tx.Bucket(boltDead).Put([]byte(id), boltEncode(stored)); err != nil {
			return err
		}
		if err := tx.Bucket(boltDeadAt).Put(boltDeadAtKey(died, id), nil); err != nil {
			return err
		}
		return boltDelete(tx, qk, id)
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("burying %s: %w", id, queue.ErrNotFound)
	}
	b.unclaim(id)
	b.count(-1, +1)
	return nil
}

// boltUnwait takes entry id out of the waiting index, if it is in it.
func boltUnwait(tx *bbolt.Tx, id string) error {
	dueOf := tx.Bucket(boltDueOf)
	due := dueOf.Get([]byte(id))
	if due == nil {
		return nil
	}
	if err := tx.Bucket(boltWaiting).Delete(append(bytes.Clone(due), id...)); err != nil {
		return err
	}
	return dueOf.Delete([]byte(id))
}

// Retry implements Store. The record and its place in the waiting index
// are one commit, so a restart finds the entry waiting with its attempt.
func (b *Store) Retry(ctx context.Context, e *queue.Entry, due time.Time) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	id := e.ID
	at := binary.BigEndian.AppendUint64(nil, uint64(due.UnixNano()))
	found, err := b.updateQueued(e, func(tx *bbolt.Tx, qk []byte, stored *queue.Entry) error {
		if err := tx.Bucket(boltQueue).Put(qk, boltEncode(stored)); err != nil {
			return err
		}
		if err := boltUnwait(tx, id); err != nil {
			return err
		}
		if err := tx.Bucket(boltWaiting).Put(append(bytes.Clone(at), id...), nil); err != nil {
			return err
		}
		return tx.Bucket(boltDueOf).Put([]byte(id), at)
	})
	if err != nil {
		return err
	}
	b.unclaim(id)
	if !found {
		return fmt.Errorf("retrying %s: %w", id, queue.ErrNotFound)
	}
	return nil
}

// NextDue implements Store: the first key of the waiting index that
// nobody holds (the held ones it steps over are at most what the engine
// holds).
func (b *Store) NextDue(ctx context.Context) (time.Time, error) {
	if err := b.usable(ctx); err != nil {
		return time.Time{}, err
	}
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	var next time.Time
	err := b.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(boltWaiting).Cursor()
		for k, _ := c.First(); k != nil && len(k) > 8; k, _ = c.Next() {
			if _, held := b.claims[string(k[8:])]; !held {
				next = time.Unix(0, int64(binary.BigEndian.Uint64(k)))
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return time.Time{}, b.storeErr(err)
	}
	return next, nil
}

// Release implements Store. Ids that are not claimed are skipped.
func (b *Store) Release(ctx context.Context, ids []string) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	b.unclaim(ids...)
	b.claimMu.Lock()
	b.claimFrom = nil // released entries are back before it
	b.claimMu.Unlock()
	return nil
}

// Stats implements Store. The counts are kept in memory; OldestQueued is
// the Queued time of the queue's first entry.
func (b *Store) Stats(ctx context.Context) (queue.Stats, error) {
	if err := b.usable(ctx); err != nil {
		return queue.Stats{}, err
	}
	var s queue.Stats
	err := b.db.View(func(tx *bbolt.Tx) error {
		s.Stored = boltStored(tx)
		_, v := tx.Bucket(boltQueue).Cursor().First()
		if v == nil {
			return nil
		}
		e, err := boltDecode(v)
		if err != nil {
			return err
		}
		s.OldestQueued = e.Queued
		return nil
	})
	if err != nil {
		return queue.Stats{}, b.storeErr(err)
	}
	b.countMu.Lock()
	s.Backlog, s.Dead, s.Keys = b.backlog, b.dead, b.keys
	b.countMu.Unlock()
	return s, nil
}

// Close implements Store. It stops the sweep and closes the file; queued
// entries, claimed ones included, stay in it.
func (b *Store) Close() error {
	b.closeMu.Lock()
	defer b.closeMu.Unlock()
	if b.closed.Swap(true) {
		return queue.ErrClosed
	}
	close(b.done)
	b.bgDone.Wait()
	if b.release != nil {
		defer b.release()
	}
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("bolt store %s: closing: %w", b.path, err)
	}
	return nil
}

// Interface guard
var _ queue.Store = (*Store)(nil)

// Lane implements queue.Store. TODO(fan-out): one queue per destination.
func (b *Store) Lane(destination string) queue.Claimer { return b }
