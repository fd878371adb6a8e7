package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
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
// Each destination's deliveries wait in a lane of their own (Lane), and a
// payload's body is kept once for all of them.
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

	// counts: backlog is queued deliveries, admitted ones reserved before
	// their commit so the bound is never overshot; lanes is the committed
	// queued deliveries per destination (only those with any); dead is dead
	// letters. All are counted again at open.
	countMu sync.Mutex
	backlog int
	lanes   map[string]int
	dead    int
	keys    int // markers in the seen bucket, expired ones not yet swept included
	records int // payloads' records

	// claims maps the ids of claimed deliveries to their lane. In each
	// lane, every queued delivery whose queue key sorts before the lane's
	// claimFrom is claimed or waiting, so Claim starts there instead of
	// stepping over all the held deliveries at the front of the lane each
	// time; Release, the one way back to unclaimed, resets it.
	claimMu   sync.Mutex
	claims    map[string]string
	claimFrom map[string][]byte

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
	// claimStep runs for every key a Claim looks at.
	claimStep func()
}

// Bucket names. The queue holds every lane, each one a range of keys that
// start with the lane's prefix (boltLane: the destination's length and
// name). In a lane, deliveries are ordered by the rest of their queue key:
// the delivery's own ID when it was admitted (IDs start with the payload's
// sequence number), a fresh sequence number when it was replayed (requeued
// maps its ID to that key), so a lane's first key is its oldest delivery.
// A payload's body is kept once, under the payload's ID, while any of its
// deliveries is queued or dead or its record is kept; refs counts those
// holds (each delivery, and the record) when there are more than one (no
// entry: one). A payload's record is kept under its ID, and indexed by
// when it was done once it is (see history.go).
var (
	boltMeta     = []byte("meta")
	boltQueue    = []byte("queue")    // lane + queue key -> delivery (no body)
	boltRequeued = []byte("requeued") // id -> lane + queue key, for replayed deliveries
	boltBodies   = []byte("bodies")   // payload id -> body
	boltRefs     = []byte("refs")     // payload id -> holds on its body (uvarint), when more than one
	boltRecords  = []byte("records")  // payload id -> its record (history)
	boltDoneAt   = []byte("doneAt")   // done (Unix ns) + payload id -> nothing, for done records, oldest first
	boltSeen     = []byte("seen")     // marker key -> expiry
	boltExpiry   = []byte("expiry")   // expiry + marker key -> nothing
	boltDead     = []byte("dead")     // id -> delivery (no body)
	boltDeadAt   = []byte("deadAt")   // died (Unix ns) + id -> nothing, oldest first
	// Deliveries put off by Retry stay in the queue bucket and are indexed
	// by lane and when they are due, so Claim finds a lane's due ones
	// without stepping over those that wait. A delivery is in both or
	// neither.
	boltWaiting = []byte("waiting") // lane + due (Unix ns) + id -> nothing, earliest first
	boltDueOf   = []byte("dueOf")   // id -> due (Unix ns), for deliveries in waiting

	boltFormatKey = []byte("format")
	boltFormat    = []byte("webhook_relay/bolt/7")
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

// reserve counts n more queued deliveries unless they do not fit in the
// backlog.
func (b *Store) reserve(n int) bool {
	b.countMu.Lock()
	defer b.countMu.Unlock()
	if max := b.MaxBacklog(); max > 0 && b.backlog+n > max {
		return false
	}
	b.backlog += n
	return true
}

// unreserve gives back n places reserved and not used.
func (b *Store) unreserve(n int) {
	b.countMu.Lock()
	defer b.countMu.Unlock()
	b.backlog -= n
}

func (b *Store) countKeys(n int) {
	b.countMu.Lock()
	defer b.countMu.Unlock()
	b.keys += n
}

// count adds queued deliveries of lane (to the backlog too) and dead
// letters.
func (b *Store) count(lane string, queued, dead int) {
	b.countMu.Lock()
	defer b.countMu.Unlock()
	b.backlog += queued
	b.addLane(lane, queued)
	b.dead += dead
}

// addLane adds n to lane's count, forgetting a lane that has none. It must
// be called with countMu held.
func (b *Store) addLane(lane string, n int) {
	if c := b.lanes[lane] + n; c > 0 {
		b.lanes[lane] = c
	} else {
		delete(b.lanes, lane)
	}
}

// boltDestinations is where e goes: e.Destinations without repeats (a
// repeat would be one delivery counted twice), else e.Destination alone.
func boltDestinations(e *queue.Entry) []string {
	if len(e.Destinations) == 0 {
		return []string{e.Destination}
	}
	out := make([]string, 0, len(e.Destinations))
	for _, d := range e.Destinations {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// Admit implements Store. The seen check, the backlog check, the max_stored
// check with the done records and dead letters that give way to it, the
// payload (its body once, a delivery in each destination's lane, its
// record with history) and the marker are one transaction, committed to
// disk before Admit returns. The backlog is checked against a count kept
// in memory: an accepted payload reserves its deliveries' places before
// its commit, so concurrent admits never overshoot MaxBacklog.
func (b *Store) Admit(ctx context.Context, e *queue.Entry) (queue.Admission, error) {
	if err := b.usable(ctx); err != nil {
		return 0, err
	}
	now := b.now()
	nowNS := now.UnixNano()
	expires := now.Add(b.Window()).UnixNano()
	mk := boltMarkerKey(e.Key)
	meta := queue.Entry{Key: e.Key, Request: e.Request, Received: now, Queued: now}
	body := e.Body
	var dests []string
	if !e.MarkerOnly {
		dests = boltDestinations(e)
	}

	size := queue.StoredSize(len(body), e.Request.Headers)
	// with history, the payload's record is charged with it
	history := b.History() > 0 && !e.MarkerOnly
	charge := size
	if history {
		charge += queue.RecordCharge
	}

	var (
		outcome   queue.Admission
		full      bool
		storeFull bool
		evicted   int
		given     int // records that gave way
		id        string
		reserved  bool
		newMarker bool
	)
	err := b.writeSized(len(body)+len(dests)*256+512, func(tx *bbolt.Tx) error {
		outcome, full, storeFull, evicted, given, id = 0, false, false, 0, 0, ""
		seen := tx.Bucket(boltSeen)
		v := seen.Get(mk)
		newMarker = v == nil
		if len(v) == 8 && nowNS < int64(binary.BigEndian.Uint64(v)) {
			if reserved { // decided otherwise in an earlier run
				b.unreserve(len(dests))
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
			if !b.reserve(len(dests)) {
				// full is decided here, in the transaction that would
				// have stored it; the key is not marked
				full = true
				return nil
			}
			reserved = true
		}
		if bound := b.MaxStored(); bound > 0 && boltStored(tx)+charge > bound {
			// done records, then the oldest dead letters give way, in
			// this transaction, and stay removed even if that is not
			// enough
			var err error
			evicted, given, err = boltEvict(tx, boltStored(tx)+charge-bound)
			if err != nil {
				return err
			}
			if boltStored(tx)+charge > bound {
				storeFull = true
				return nil
			}
		}
		if err := boltAddStored(tx, charge); err != nil {
			return err
		}
		qb := tx.Bucket(boltQueue)
		seq, err := qb.NextSequence()
		if err != nil {
			return err
		}
		id = boltID(seq)
		m := meta
		m.Payload = id
		for _, d := range dests {
			m.ID, m.Destination = queue.DeliveryID(id, d, len(dests) == 1), d
			if err := qb.Put(boltLaneKey(d, m.ID), boltEncode(&m)); err != nil {
				return err
			}
		}
		if err := tx.Bucket(boltBodies).Put([]byte(id), body); err != nil {
			return err
		}
		holds := len(dests)
		if history {
			holds++ // the record's
			re := *e
			re.Payload, re.Destinations, re.Received = id, dests, now
			if err := tx.Bucket(boltRecords).Put([]byte(id), boltEncodeRecord(queue.NewRecord(&re))); err != nil {
				return err
			}
		}
		if holds > 1 {
			if err := tx.Bucket(boltRefs).Put([]byte(id), binary.AppendUvarint(nil, uint64(holds))); err != nil {
				return err
			}
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
			b.unreserve(len(dests))
		}
	}
	if err == nil && given > 0 {
		b.countRecords(-given)
	}
	if err == nil && evicted > 0 {
		b.count("", 0, -evicted)
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
		e.ID, e.Payload, e.Received, e.Queued = id, id, now, now
		b.countMu.Lock()
		for _, d := range dests {
			b.addLane(d, 1) // the backlog has them: reserved
		}
		if newMarker {
			b.keys++
		}
		if history {
			b.records++
		}
		b.countMu.Unlock()
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

// boltQueueKey finds where delivery id sits in the queue: in lane, unless
// it was replayed (requeued has its key); nil when it is not queued. A
// damaged record, whose id cannot be read, goes by its queue key.
func boltQueueKey(tx *bbolt.Tx, lane, id string) []byte {
	qk := boltLaneKey(lane, id)
	if k := tx.Bucket(boltRequeued).Get([]byte(id)); k != nil {
		qk = bytes.Clone(k)
	}
	v := tx.Bucket(boltQueue).Get(qk)
	if v == nil {
		return nil
	}
	if got := boltEntryID(v); got != id {
		if _, _, rest, ok := boltSplitLane(qk); got != "" || !ok || string(rest) != id {
			return nil
		}
	}
	return qk
}

// laneOf is the lane to find delivery id in: the one it was claimed from,
// else lane, the one asked. So a claimed delivery can be ended through the
// store as well as through its lane.
func (b *Store) laneOf(lane, id string) string {
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	if l, ok := b.claims[id]; ok {
		return l
	}
	return lane
}

// Claim implements Store: lane "", the deliveries admitted without a
// destination.
func (b *Store) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	return b.claim(ctx, "", max)
}

// claim claims from lane. Claims live in this process until Ack, Bury,
// Retry or Release; after a restart nothing is claimed. It merges two
// ordered walks of the lane: the waiting index up to now (deliveries put
// off by Retry, by due time) and the queue from the lane's claimFrom (the
// others, due since they were queued), taking the earlier due of the two
// each time.
func (b *Store) claim(ctx context.Context, lane string, max int) ([]*queue.Entry, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	now := b.now().UnixNano()
	prefix := boltLane(lane)
	var out []*queue.Entry
	err := b.db.View(func(tx *bbolt.Tx) error {
		bodies, queued, dueOf := tx.Bucket(boltBodies), tx.Bucket(boltQueue), tx.Bucket(boltDueOf)
		out = out[:0]
		read := func(k, v []byte) *queue.Entry {
			id := boltEntryID(v)
			if id == "" {
				_, _, rest, _ := boltSplitLane(k)
				id = string(rest) // damaged: it goes by its queue key
			}
			e, err := boltDecode(v)
			if err != nil {
				e = &queue.Entry{ID: id, Payload: boltPayloadOf(id), Destination: lane,
					Damaged: fmt.Sprintf("the stored record of queued entry %s cannot be read: %v", id, err)}
			}
			e.BodySize = len(bodies.Get([]byte(e.Payload)))
			return e
		}

		// the next due delivery of the lane's waiting index, nobody's
		wc := tx.Bucket(boltWaiting).Cursor()
		var wait *queue.Entry
		var waitDue int64
		wk, _ := wc.Seek(prefix)
		nextWaiting := func() {
			for wait = nil; wk != nil && bytes.HasPrefix(wk, prefix); wk, _ = wc.Next() {
				if b.hooks.claimStep != nil {
					b.hooks.claimStep()
				}
				rest := wk[len(prefix):]
				if len(rest) <= 8 {
					continue // names no delivery
				}
				waitDue = int64(binary.BigEndian.Uint64(rest))
				if waitDue > now {
					wk = nil
					return
				}
				id := string(rest[8:])
				if _, held := b.claims[id]; held {
					continue
				}
				qk := boltQueueKey(tx, lane, id)
				if qk == nil {
					continue // not queued: the index is put right when it is written next
				}
				wait = read(qk, queued.Get(qk))
				wk, _ = wc.Next()
				return
			}
			wk = nil
		}

		// the next delivery of the lane from its claimFrom, nobody's and
		// not waiting; everything before claimFrom is either
		qc := queued.Cursor()
		var fresh *queue.Entry
		var freshKey, last []byte
		start := b.claimFrom[lane]
		if start == nil {
			start = prefix
		}
		qk, qv := qc.Seek(start)
		nextFresh := func() {
			for fresh = nil; qk != nil && bytes.HasPrefix(qk, prefix); qk, qv = qc.Next() {
				if b.hooks.claimStep != nil {
					b.hooks.claimStep()
				}
				last = qk
				id := boltEntryID(qv)
				if id == "" {
					id = string(qk[len(prefix):])
				}
				if _, held := b.claims[id]; held || dueOf.Get([]byte(id)) != nil {
					continue
				}
				fresh, freshKey = read(qk, qv), bytes.Clone(qk)
				qk, qv = qc.Next()
				return
			}
			qk = nil
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
			b.claimFrom[lane] = freshKey
		case last != nil:
			// appending a zero byte makes the smallest key after last
			b.claimFrom[lane] = append(bytes.Clone(last), 0)
		}
		return nil
	})
	if err != nil {
		delete(b.claimFrom, lane)
		return nil, b.storeErr(err)
	}
	for _, e := range out {
		b.claims[e.ID] = lane
	}
	return out, nil
}

// Body implements Store.
func (b *Store) Body(ctx context.Context, id string) ([]byte, error) {
	return b.body(ctx, "", id, func(n int) []byte { return make([]byte, n) })
}

// ReadBody implements queue.BodyReader: a large body is copied out of the
// memory map into a mapping of bodybuf rather than onto the heap.
func (b *Store) ReadBody(ctx context.Context, id string) ([]byte, error) {
	return b.body(ctx, "", id, bodybuf.Alloc)
}

// body reads the body of delivery id, of lane, into a buffer of alloc.
func (b *Store) body(ctx context.Context, lane, id string, alloc func(int) []byte) ([]byte, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	lane = b.laneOf(lane, id)
	var body []byte
	err := b.db.View(func(tx *bbolt.Tx) error {
		qk := boltQueueKey(tx, lane, id)
		if qk == nil {
			return nil
		}
		// a copy: the value lives in the memory map only as long as tx
		payload := boltPayload(id, tx.Bucket(boltQueue).Get(qk))
		v := tx.Bucket(boltBodies).Get([]byte(payload))
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
	return b.extend(ctx, "", ids)
}

func (b *Store) extend(ctx context.Context, lane string, ids []string) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	lanes := make([]string, len(ids))
	for i, id := range ids {
		lanes[i] = b.laneOf(lane, id)
	}
	var missing string
	err := b.db.View(func(tx *bbolt.Tx) error {
		for i, id := range ids {
			if boltQueueKey(tx, lanes[i], id) == nil {
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

// updateQueued runs fn, in one write transaction, on the queued delivery
// e.ID of lane with e's attempt record applied. It reports the lane the
// delivery was found in and whether it was. A stored record that cannot be
// read is replaced by what e says.
func (b *Store) updateQueued(lane string, e *queue.Entry, fn func(tx *bbolt.Tx, qk []byte, stored *queue.Entry) error) (string, bool, error) {
	id, attempts, status, reason := e.ID, e.Attempts, e.LastStatus, e.LastError
	lane = b.laneOf(lane, id)
	fallback := *e
	fallback.Body, fallback.Destinations = nil, nil
	if fallback.Payload == "" {
		fallback.Payload = boltPayloadOf(id)
	}
	var (
		found bool
		in    string
	)
	err := b.write(func(tx *bbolt.Tx) error {
		found = false // the function may run again (group commit)
		qk := boltQueueKey(tx, lane, id)
		if qk == nil {
			return nil
		}
		_, in, _, _ = boltSplitLane(qk)
		stored, err := boltDecode(tx.Bucket(boltQueue).Get(qk))
		if err != nil {
			f := fallback
			f.Destination = in
			stored = &f
		}
		stored.Attempts, stored.LastStatus, stored.LastError = attempts, status, reason
		if err := fn(tx, qk, stored); err != nil {
			return err
		}
		found = true
		return nil
	})
	return in, found, err
}

// Ack implements Store. The delivery is deleted, and its payload's body
// with the last of its deliveries; the marker stays until the window ends.
// Acking an id that is no longer queued is not an error.
func (b *Store) Ack(ctx context.Context, id string) error {
	return b.ack(ctx, "", id)
}

func (b *Store) ack(ctx context.Context, lane, id string) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	lane = b.laneOf(lane, id)
	var (
		found bool
		in    string
	)
	err := b.write(func(tx *bbolt.Tx) error {
		found = false
		qk := boltQueueKey(tx, lane, id)
		if qk == nil {
			return nil
		}
		found = true
		_, in, _, _ = boltSplitLane(qk)
		if _, err := boltUnref(tx, id, tx.Bucket(boltQueue).Get(qk)); err != nil {
			return err
		}
		return boltDelete(tx, qk, id)
	})
	if err != nil {
		return err
	}
	b.unclaim(id)
	if found {
		b.count(in, -1, 0)
	}
	return nil
}

// boltDelete takes delivery id (at queue key qk) out of the queue, the
// waiting index and requeued.
func boltDelete(tx *bbolt.Tx, qk []byte, id string) error {
	if err := boltUnwait(tx, qk, id); err != nil {
		return err
	}
	if err := tx.Bucket(boltQueue).Delete(qk); err != nil {
		return err
	}
	return tx.Bucket(boltRequeued).Delete([]byte(id))
}

func (b *Store) unclaim(ids ...string) {
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	for _, id := range ids {
		delete(b.claims, id)
	}
}

// Bury implements Store. It buries the stored delivery, not e, so a caller
// holding a stale copy cannot change the body or key of a dead letter. The
// body stays where it is, held by the dead letter.
func (b *Store) Bury(ctx context.Context, e *queue.Entry) error {
	return b.bury(ctx, "", e)
}

func (b *Store) bury(ctx context.Context, lane string, e *queue.Entry) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	id := e.ID
	died := b.now()
	in, found, err := b.updateQueued(lane, e, func(tx *bbolt.Tx, qk []byte, stored *queue.Entry) error {
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
	b.count(in, -1, +1)
	return nil
}

// boltUnwait takes delivery id (at queue key qk) out of the waiting index,
// if it is in it.
func boltUnwait(tx *bbolt.Tx, qk []byte, id string) error {
	dueOf := tx.Bucket(boltDueOf)
	due := dueOf.Get([]byte(id))
	if due == nil {
		return nil
	}
	prefix, _, _, _ := boltSplitLane(qk)
	wk := append(append(bytes.Clone(prefix), due...), id...)
	if err := tx.Bucket(boltWaiting).Delete(wk); err != nil {
		return err
	}
	return dueOf.Delete([]byte(id))
}

// Retry implements Store. The record and its place in the waiting index
// are one commit, so a restart finds the delivery waiting with its attempt.
func (b *Store) Retry(ctx context.Context, e *queue.Entry, due time.Time) error {
	return b.retry(ctx, "", e, due)
}

func (b *Store) retry(ctx context.Context, lane string, e *queue.Entry, due time.Time) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	id := e.ID
	at := binary.BigEndian.AppendUint64(nil, uint64(due.UnixNano()))
	_, found, err := b.updateQueued(lane, e, func(tx *bbolt.Tx, qk []byte, stored *queue.Entry) error {
		if err := tx.Bucket(boltQueue).Put(qk, boltEncode(stored)); err != nil {
			return err
		}
		if err := boltUnwait(tx, qk, id); err != nil {
			return err
		}
		prefix, _, _, _ := boltSplitLane(qk)
		wk := append(append(bytes.Clone(prefix), at...), id...)
		if err := tx.Bucket(boltWaiting).Put(wk, nil); err != nil {
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

// NextDue implements Store.
func (b *Store) NextDue(ctx context.Context) (time.Time, error) {
	return b.nextDue(ctx, "")
}

// nextDue is the first key of lane's part of the waiting index that nobody
// holds (the held ones it steps over are at most what the engine holds).
func (b *Store) nextDue(ctx context.Context, lane string) (time.Time, error) {
	if err := b.usable(ctx); err != nil {
		return time.Time{}, err
	}
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	prefix := boltLane(lane)
	var next time.Time
	err := b.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(boltWaiting).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			rest := k[len(prefix):]
			if len(rest) <= 8 {
				continue
			}
			if _, held := b.claims[string(rest[8:])]; !held {
				next = time.Unix(0, int64(binary.BigEndian.Uint64(rest)))
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

// Release implements Store. Ids that are not claimed are skipped. It works
// by id alone, whichever lane the deliveries were claimed from.
func (b *Store) Release(ctx context.Context, ids []string) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	for _, id := range ids {
		if lane, ok := b.claims[id]; ok {
			delete(b.claims, id)
			delete(b.claimFrom, lane) // released deliveries are back before it
		}
	}
	return nil
}

// Stats implements Store. The counts are kept in memory; OldestQueued is
// the earliest Queued time of the lanes' first deliveries.
func (b *Store) Stats(ctx context.Context) (queue.Stats, error) {
	if err := b.usable(ctx); err != nil {
		return queue.Stats{}, err
	}
	var s queue.Stats
	err := b.db.View(func(tx *bbolt.Tx) error {
		s.Stored = boltStored(tx)
		c := tx.Bucket(boltQueue).Cursor()
		for k, v := c.First(); k != nil; {
			prefix, _, _, ok := boltSplitLane(k)
			if !ok {
				k, v = c.Next()
				continue
			}
			if e, err := boltDecode(v); err == nil && (s.OldestQueued.IsZero() || e.Queued.Before(s.OldestQueued)) {
				s.OldestQueued = e.Queued
			}
			// the next lane: every key of this one goes on with a digit
			k, v = c.Seek(append(bytes.Clone(prefix), 0xff))
		}
		return nil
	})
	if err != nil {
		return queue.Stats{}, b.storeErr(err)
	}
	b.countMu.Lock()
	s.Backlog, s.Dead, s.Keys, s.Records = b.backlog, b.dead, b.keys, b.records
	if len(b.lanes) > 0 {
		s.Lanes = maps.Clone(b.lanes)
	}
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

// Lane implements queue.Store: Claim and NextDue see only destination's
// deliveries. The rest goes by id (bolt ids are unique across lanes): a
// delivery is looked for in the lane it was claimed from, else in this
// one.
func (b *Store) Lane(destination string) queue.Claimer {
	return storeLane{b: b, destination: destination}
}

// storeLane is the queue of one destination's deliveries in a Store; it is a
// queue.BodyReader too.
type storeLane struct {
	b           *Store
	destination string
}

// Claim implements queue.Claimer.
func (l storeLane) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	return l.b.claim(ctx, l.destination, max)
}

// Body implements queue.Claimer.
func (l storeLane) Body(ctx context.Context, id string) ([]byte, error) {
	return l.b.body(ctx, l.destination, id, func(n int) []byte { return make([]byte, n) })
}

// ReadBody implements queue.BodyReader.
func (l storeLane) ReadBody(ctx context.Context, id string) ([]byte, error) {
	return l.b.body(ctx, l.destination, id, bodybuf.Alloc)
}

// Extend implements queue.Claimer.
func (l storeLane) Extend(ctx context.Context, ids []string) error {
	return l.b.extend(ctx, l.destination, ids)
}

// Ack implements queue.Claimer.
func (l storeLane) Ack(ctx context.Context, id string) error { return l.b.ack(ctx, l.destination, id) }

// Bury implements queue.Claimer.
func (l storeLane) Bury(ctx context.Context, e *queue.Entry) error {
	return l.b.bury(ctx, l.destination, e)
}

// Retry implements queue.Claimer.
func (l storeLane) Retry(ctx context.Context, e *queue.Entry, due time.Time) error {
	return l.b.retry(ctx, l.destination, e, due)
}

// NextDue implements queue.Claimer.
func (l storeLane) NextDue(ctx context.Context) (time.Time, error) {
	return l.b.nextDue(ctx, l.destination)
}

// Release implements queue.Claimer.
func (l storeLane) Release(ctx context.Context, ids []string) error { return l.b.Release(ctx, ids) }

// Paused implements queue.Claimer.
func (l storeLane) Paused(ctx context.Context) ([]string, error) { return l.b.Paused(ctx) }

// TrimDead implements queue.Claimer: the store's dead letters, every lane's.
func (l storeLane) TrimDead(ctx context.Context, max int, cutoff time.Time, limit int) ([]*queue.Entry, error) {
	return l.b.TrimDead(ctx, max, cutoff, limit)
}

var (
	_ queue.Claimer    = storeLane{}
	_ queue.BodyReader = storeLane{}
)
