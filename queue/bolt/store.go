package bolt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
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

	boltFormatKey = []byte("format")
	boltFormat    = []byte("webhook_relay/bolt/1")
)

// OpenTimeout is how long Open waits for another process to let go
// of the file before it gives up.
const OpenTimeout = time.Second

const (
	boltMaxBatch = 1000 // calls sharing one commit
	// bytes of values one commit writes, about: bbolt copies them into
	// page buffers, held until the commit ends
	boltMaxBatchBytes = 16 << 20
	boltMaxYields     = 8    // yields while gathering a group; see gather
	boltSweepBatch    = 1000 // markers deleted per sweep transaction
	boltMaxRawKey     = 512  // longer dedupe keys are stored as their SHA-256
	boltIDWidth       = 20   // digits of an id: uint64 fits, and ids sort as strings
	boltEntryFormat   = 3    // 2: the same without Headers; 1: without Died either
	boltReplayBatch   = 256  // dead letters replayed per transaction
)

// Open opens the bbolt file at path, creating it (and its directory,
// mode 0700) if it does not exist. An existing file is never recreated or
// truncated: one that is damaged, is not a webhook_relay store, or is held
// by another process is an error naming the path. A panic in the store's
// background goroutines is logged to Caddy's default logger.
func Open(path string, opts queue.Options) (*Store, error) {
	return open(path, opts, caddy.Log(), testHooks{})
}

// open is Open with the logger for the background goroutines' panics.
func open(path string, opts queue.Options, logger *zap.Logger, hooks testHooks) (*Store, error) {
	if path == "" {
		return nil, errors.New("bolt store: no file path given")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("bolt store %s: creating its directory: %w", path, err)
	}
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("bolt store %s: not a regular file (%s); give the path of the store file itself", path, fi.Mode().Type())
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("bolt store %s: %w", path, err)
	}

	fi, statErr := os.Stat(path)
	existed := statErr == nil && fi.Size() > 0
	db, err := openBoltFile(path, existed)
	if err != nil {
		return nil, err
	}
	b := &Store{
		db:       db,
		path:     path,
		now:      opts.Clock(),
		commits:  make(chan *boltCommit),
		done:     make(chan struct{}),
		sweepMax: boltSweepBatch,
		claims:   make(map[string]struct{}),
		logger:   logger,
		hooks:    hooks,
	}
	b.SetLimits(opts.Window, opts.MaxBacklog)
	if err := b.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	b.bgDone.Add(2)
	go b.committer()
	go b.sweeper()
	return b, nil
}

// openBoltFile opens the file with a lock timeout and turns bbolt's errors
// (and panics, which a damaged file can cause) into ones a person can act on.
func openBoltFile(path string, existed bool) (db *bbolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("bolt store %s: the file is damaged (%v); it was left as it is: "+
				"restore it from a backup, or move it aside to start with an empty store", path, r)
		}
	}()
	db, err = bbolt.Open(path, 0o600, &bbolt.Options{Timeout: OpenTimeout})
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("bolt store %s: another process holds this file (gave up after %s); "+
			"only one Caddy instance can use a bolt store: stop the other one, or give this one its own path",
			path, OpenTimeout)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("bolt store %s: cannot open: %w; Caddy's user needs to read and write it", path, err)
	case existed, errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum),
		errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrInvalidMapping):
		return nil, fmt.Errorf("bolt store %s: not a readable bbolt file (%v); it was left as it is: "+
			"restore it from a backup, or move it aside to start with an empty store", path, err)
	default:
		return nil, fmt.Errorf("bolt store %s: cannot open: %w", path, err)
	}
}

// init creates the buckets of a new file, checks an existing one is a
// webhook_relay store, and counts what it holds.
func (b *Store) init() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bolt store %s: the file is damaged (%v); it was left as it is: "+
				"restore it from a backup, or move it aside to start with an empty store", b.path, r)
		}
	}()
	err = b.db.Update(func(tx *bbolt.Tx) error {
		if meta := tx.Bucket(boltMeta); meta != nil {
			if f := meta.Get(boltFormatKey); !bytes.Equal(f, boltFormat) {
				return fmt.Errorf("unknown format %q, want %q (written by a newer version?); it was left as it is", f, boltFormat)
			}
		} else {
			// a bbolt file with buckets but no meta belongs to someone else
			if err := tx.ForEach(func([]byte, *bbolt.Bucket) error { return errBoltForeign }); err != nil {
				return errors.New("a bbolt file that is not a webhook_relay store; " +
					"it was left as it is: give the relay a path of its own")
			}
			meta, err := tx.CreateBucket(boltMeta)
			if err != nil {
				return err
			}
			if err := meta.Put(boltFormatKey, boltFormat); err != nil {
				return err
			}
		}
		for _, name := range [][]byte{boltQueue, boltRequeued, boltBodies, boltSeen, boltExpiry, boltDead, boltDeadAt} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("bucket %s: %w", name, err)
			}
		}
		b.backlog = boltCountKeys(tx.Bucket(boltQueue))
		b.dead = boltCountKeys(tx.Bucket(boltDead))
		b.keys = boltCountKeys(tx.Bucket(boltSeen))
		if boltCountKeys(tx.Bucket(boltDeadAt)) != b.dead {
			return boltIndexDead(tx)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("bolt store %s: %w", b.path, err)
	}
	return nil
}

var errBoltForeign = errors.New("foreign bucket")

// boltIndexDead rebuilds the index of dead letters by time of death, for a
// file written before there was one: a letter with no Died counts from
// when it was last queued.
func boltIndexDead(tx *bbolt.Tx) error {
	if err := tx.DeleteBucket(boltDeadAt); err != nil {
		return err
	}
	idx, err := tx.CreateBucket(boltDeadAt)
	if err != nil {
		return err
	}
	return tx.Bucket(boltDead).ForEach(func(k, v []byte) error {
		died := time.Time{}
		if e, err := boltDecode(v); err == nil {
			died = e.Died
			if died.IsZero() {
				died = e.Queued
			}
		}
		return idx.Put(boltDeadAtKey(died, string(k)), nil)
	})
}

// boltDeadAtKey is an entry's key in the index of dead letters by death.
func boltDeadAtKey(died time.Time, id string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(died.UnixNano())), id...)
}

func boltCountKeys(bk *bbolt.Bucket) int {
	n := 0
	c := bk.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	return n
}

// Path returns the file the store lives in.
func (b *Store) Path() string { return b.path }

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

// Group commit. Writes go through one committer goroutine that runs every
// call waiting at that moment in one transaction and one fsync: an idle
// store commits a lone call at once, a busy one batches whatever arrived
// during the previous commit. Like bbolt's DB.Batch, a call's function may
// run more than once (when another call in its transaction fails, the
// others are run again without it), so it must set its results afresh on
// every run; the results of the run that committed are the ones that count.

type boltCommit struct {
	fn       func(*bbolt.Tx) error
	size     int // bytes of values it writes, about
	done     chan error
	answered bool // the committer's: done has the result
}

// answer gives the call its result, once: a call answered already keeps
// its answer when a panic cuts its group short afterwards.
func (c *boltCommit) answer(err error) {
	if !c.answered {
		c.answered = true
		c.done <- err
	}
}

// errBoltCommitPanicked answers the calls of a group commit cut short by a
// panic. bbolt rolled the transaction back (or, if the panic came in its
// commit, may have written it): the caller reports a failure, and a sender
// that retries finds its payload accepted, or stored after all and
// answered duplicate, as after a timeout.
var errBoltCommitPanicked = errors.New("the commit panicked (logged with its stack); it may not have been written")

// write runs fn in a transaction shared with other concurrent writes, and
// returns once it is committed to disk.
func (b *Store) write(fn func(*bbolt.Tx) error) error { return b.writeSized(0, fn) }

// writeSized is write for a call that writes about size bytes of values: a
// commit copies what it writes into page buffers, so a group is bounded in
// bytes as well as in calls.
func (b *Store) writeSized(size int, fn func(*bbolt.Tx) error) error {
	c := &boltCommit{fn: fn, size: size, done: make(chan error, 1)}
	select {
	case b.commits <- c:
	case <-b.done:
		return queue.ErrClosed
	}
	return b.storeErr(<-c.done)
}

// committing is what the committer holds between one step and the next,
// kept outside its loop so that a panic loses none of it.
type committing struct {
	calls []*boltCommit // the group being committed
	next  *boltCommit   // taken, but did not fit in the last group
}

// committer commits groups until Close. A panic (in bbolt, say) is logged
// with its stack and fails the calls of the group it cut short that have
// no answer yet, so no caller waits for ever; the committer goes on with
// the next group.
func (b *Store) committer() {
	defer b.bgDone.Done()
	c := &committing{calls: make([]*boltCommit, 0, boltMaxBatch)}
	for guard.Run(b.logger, "the bolt store's committer", func() { b.commitUntilClosed(c) }) {
		for _, call := range c.calls {
			call.answer(errBoltCommitPanicked)
		}
		clear(c.calls)
		c.calls = c.calls[:0]
	}
}

func (b *Store) commitUntilClosed(c *committing) {
	for {
		if c.next == nil {
			select {
			case c.next = <-b.commits:
			case <-b.done:
				return
			}
		}
		c.calls = append(c.calls[:0], c.next)
		c.next = nil
		b.gather(c)
		b.commitGroup(c.calls)
		clear(c.calls)
		c.calls = c.calls[:0]
	}
}

// gather adds the calls that are waiting to the group. A commit costs
// about the same for one call as for dozens (two fsyncs and the pages it
// rewrites), so under load it pays to let the goroutines that are about to
// call write get there first: each yield runs whatever is runnable, and
// gathering stops once a yield brings nobody new. An idle store yields once
// and commits at once. A group holds at most boltMaxBatch calls and
// boltMaxBatchBytes of values (one larger call commits alone); the call it
// took that did not fit, if any, is c.next.
func (b *Store) gather(c *committing) {
	size := c.calls[0].size
	if size >= boltMaxBatchBytes {
		return
	}
	for range boltMaxYields {
		runtime.Gosched()
		before := len(c.calls)
		for len(c.calls) < boltMaxBatch {
			select {
			case call := <-b.commits:
				if size+call.size > boltMaxBatchBytes {
					c.next = call
					return
				}
				size += call.size
				c.calls = append(c.calls, call)
				continue
			default:
			}
			break
		}
		if len(c.calls) == before || len(c.calls) == boltMaxBatch {
			break
		}
	}
}

func (b *Store) commitGroup(calls []*boltCommit) {
	for len(calls) > 0 {
		failed := -1
		err := b.db.Update(func(tx *bbolt.Tx) error {
			for i, c := range calls {
				if err := boltSafeCall(c.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			if b.hooks.commit != nil {
				b.hooks.commit()
			}
			return nil
		})
		if failed < 0 {
			for _, c := range calls {
				c.answer(err)
			}
			return
		}
		// the failing call gets its own transaction; the rest run again
		c := calls[failed]
		c.answer(b.db.Update(func(tx *bbolt.Tx) error { return boltSafeCall(c.fn, tx) }))
		calls = append(calls[:failed:failed], calls[failed+1:]...)
	}
}

func boltSafeCall(fn func(*bbolt.Tx) error, tx *bbolt.Tx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in transaction: %v", r)
		}
	}()
	return fn(tx)
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

// Admit implements Store. The seen check, the backlog check, the payload and
// the marker are one transaction, committed to disk before Admit returns.
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
	meta := queue.Entry{Key: e.Key, Request: e.Request, Received: now, Queued: now}
	body := e.Body

	var (
		outcome   queue.Admission
		full      bool
		id        string
		reserved  bool
		newMarker bool
	)
	err := b.writeSized(len(body), func(tx *bbolt.Tx) error {
		outcome, full, id = 0, false, ""
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
		if !reserved {
			if !b.reserve() {
				// full is decided here, in the transaction that would
				// have stored it; the key is not marked
				full = true
				return nil
			}
			reserved = true
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
		exp := binary.BigEndian.AppendUint64(nil, uint64(expires))
		if err := seen.Put(mk, exp); err != nil {
			return err
		}
		if err := tx.Bucket(boltExpiry).Put(append(exp, mk...), nil); err != nil {
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
	switch {
	case err != nil:
		return 0, err
	case full:
		return 0, queue.ErrBacklogFull
	case outcome == queue.Accepted:
		e.ID, e.Received, e.Queued = id, now, now
		if newMarker {
			b.countKeys(1)
		}
	}
	return outcome, nil
}

// boltMarkerKey is the seen bucket's key for a dedupe key: the key itself, or
// its SHA-256 when it is long (bbolt keys are bounded). The first byte keeps
// the two kinds apart and makes an empty key a valid bbolt key.
func boltMarkerKey(key string) []byte {
	if len(key) <= boltMaxRawKey {
		return append([]byte{0}, key...)
	}
	sum := sha256.Sum256([]byte(key))
	return append([]byte{1}, sum[:]...)
}

func boltID(seq uint64) string {
	s := strconv.FormatUint(seq, 10)
	return string(bytes.Repeat([]byte{'0'}, boltIDWidth-len(s))) + s
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

// Claim implements Store. Claims live in this process until Ack, Bury or
// Release; after a restart nothing is claimed.
func (b *Store) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	var out []*queue.Entry
	err := b.db.View(func(tx *bbolt.Tx) error {
		bodies := tx.Bucket(boltBodies)
		c := tx.Bucket(boltQueue).Cursor()
		out = out[:0]
		var last []byte
		defer func() {
			if last != nil {
				// appending a zero byte makes the smallest key after last
				b.claimFrom = append(bytes.Clone(last), 0)
			}
		}()
		k, v := c.First()
		if b.claimFrom != nil {
			k, v = c.Seek(b.claimFrom)
		}
		for ; k != nil && len(out) < max; k, v = c.Next() {
			last = k
			id := boltEntryID(v)
			if id == "" {
				id = string(k) // damaged: it goes by its queue key
			}
			if _, held := b.claims[id]; held {
				continue
			}
			e, err := boltDecode(v)
			if err != nil {
				e = &queue.Entry{ID: id, Damaged: fmt.Sprintf("the stored record of queued entry %s cannot be read: %v", k, err)}
			}
			e.BodySize = len(bodies.Get([]byte(e.ID)))
			out = append(out, e)
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
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	var body []byte
	err := b.db.View(func(tx *bbolt.Tx) error {
		if boltQueueKey(tx, id) == nil {
			return nil
		}
		// a copy: the value lives in the memory map only as long as tx
		body = bytes.Clone(tx.Bucket(boltBodies).Get([]byte(id)))
		if body == nil {
			body = []byte{}
		}
		return nil
	})
	if err != nil {
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

// Attempted implements Store.
func (b *Store) Attempted(ctx context.Context, e *queue.Entry) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	found, err := b.updateQueued(e, func(tx *bbolt.Tx, qk []byte, stored *queue.Entry) error {
		return tx.Bucket(boltQueue).Put(qk, boltEncode(stored))
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("recording attempt on %s: %w", e.ID, queue.ErrNotFound)
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

// boltDelete takes entry id (at queue key qk) out of the queue, and out of
// the other buckets named.
func boltDelete(tx *bbolt.Tx, qk []byte, id string, others ...[]byte) error {
	if err := tx.Bucket(boltQueue).Delete(qk); err != nil {
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
			e.BodySize = len(tx.Bucket(boltBodies).Get(k))
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
		e.Body = bytes.Clone(tx.Bucket(boltBodies).Get([]byte(id)))
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

// DeleteDead implements Store. The body goes with it.
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
	b.count(0, -1)
	return nil
}

// boltDeleteDead removes dead letter id (its record v), its body and its
// place in the index by death.
func boltDeleteDead(tx *bbolt.Tx, id string, v []byte) error {
	if e, err := boltDecode(v); err == nil {
		died := e.Died
		if died.IsZero() {
			died = e.Queued // as boltIndexDead indexed it
		}
		if err := tx.Bucket(boltDeadAt).Delete(boltDeadAtKey(died, id)); err != nil {
			return err
		}
	}
	if err := tx.Bucket(boltDead).Delete([]byte(id)); err != nil {
		return err
	}
	return tx.Bucket(boltBodies).Delete([]byte(id))
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
				e = &queue.Entry{ID: id}
			}
			e.BodySize = len(tx.Bucket(boltBodies).Get([]byte(id)))
			if err := deadBk.Delete([]byte(id)); err != nil {
				return err
			}
			if err := tx.Bucket(boltBodies).Delete([]byte(id)); err != nil {
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
	b.count(0, -len(out))
	return out, nil
}

// Replay implements Store. It ignores MaxBacklog: replaying is an
// operator's decision. Replayed entries join the back of the queue under a
// new queue key and keep their ID. It commits boltReplayBatch letters at a
// time, so admits wait for one short commit at most, never for the whole
// replay.
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

// replay puts the dead letters in ids back in the queue, in one commit.
func (b *Store) replay(ids []string) (int, error) {
	now := b.now()
	var n int
	err := b.write(func(tx *bbolt.Tx) error {
		n = 0
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
				e = &queue.Entry{ID: id} // the body is what matters, and it is intact
			}
			died := e.Died
			if died.IsZero() {
				died = e.Queued
			}
			if err := tx.Bucket(boltDeadAt).Delete(boltDeadAtKey(died, id)); err != nil {
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
			qk := []byte(boltID(seq))
			if err := qb.Put(qk, boltEncode(e)); err != nil {
				return err
			}
			if err := requeued.Put([]byte(id), qk); err != nil {
				return err
			}
			if err := dead.Delete([]byte(id)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	b.count(n, -n)
	return n, nil
}

// Stats implements Store. The counts are kept in memory; OldestQueued is
// the Queued time of the queue's first entry.
func (b *Store) Stats(ctx context.Context) (queue.Stats, error) {
	if err := b.usable(ctx); err != nil {
		return queue.Stats{}, err
	}
	var s queue.Stats
	err := b.db.View(func(tx *bbolt.Tx) error {
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

// Entry encoding: a format byte, then ID, Key and the request fields as
// length-prefixed strings, Received and Queued as Unix nanoseconds,
// Attempts, LastStatus and LastError. Bodies are kept raw in their own
// bucket, so recording an attempt or burying never rewrites them.

func boltEncode(e *queue.Entry) []byte {
	n := 1 + 10*8 + len(e.ID) + len(e.Key) + len(e.Request.RawQuery) + len(e.Request.ContentType) +
		len(e.Request.UserAgent) + len(e.Request.ForwardedFor) + len(e.LastError)
	buf := make([]byte, 0, n)
	buf = append(buf, boltEntryFormat)
	for _, s := range []string{e.ID, e.Key, e.Request.RawQuery, e.Request.ContentType, e.Request.UserAgent, e.Request.ForwardedFor} {
		buf = binary.AppendUvarint(buf, uint64(len(s)))
		buf = append(buf, s...)
	}
	buf = binary.AppendVarint(buf, e.Received.UnixNano())
	buf = binary.AppendVarint(buf, e.Queued.UnixNano())
	buf = binary.AppendVarint(buf, int64(e.Attempts))
	buf = binary.AppendVarint(buf, int64(e.LastStatus))
	buf = binary.AppendUvarint(buf, uint64(len(e.LastError)))
	buf = append(buf, e.LastError...)
	var died int64
	if !e.Died.IsZero() {
		died = e.Died.UnixNano()
	}
	buf = binary.AppendVarint(buf, died)
	return queue.AppendHeaders(buf, e.Request.Headers)
}

var errBoltEntry = errors.New("malformed entry")

// boltEntryID reads only the ID of an encoded entry, "" if it is malformed.
func boltEntryID(v []byte) string {
	if len(v) < 2 || v[0] < 1 || v[0] > boltEntryFormat {
		return ""
	}
	n, w := binary.Uvarint(v[1:])
	if w <= 0 || uint64(len(v)-1-w) < n {
		return ""
	}
	return string(v[1+w : 1+w+int(n)])
}

func boltDecode(v []byte) (*queue.Entry, error) {
	if len(v) < 1 || v[0] < 1 || v[0] > boltEntryFormat {
		return nil, errBoltEntry
	}
	d := boltDecoder{buf: v[1:]}
	e := &queue.Entry{
		ID:  d.str(),
		Key: d.str(),
		Request: queue.RequestMeta{
			RawQuery:     d.str(),
			ContentType:  d.str(),
			UserAgent:    d.str(),
			ForwardedFor: d.str(),
		},
	}
	e.Received = time.Unix(0, d.varint())
	e.Queued = time.Unix(0, d.varint())
	e.Attempts = int(d.varint())
	e.LastStatus = int(d.varint())
	e.LastError = d.str()
	if v[0] >= 2 {
		if died := d.varint(); died != 0 {
			e.Died = time.Unix(0, died)
		}
	}
	if d.bad {
		return nil, errBoltEntry
	}
	if v[0] >= 3 {
		var err error
		if e.Request.Headers, _, err = queue.ReadHeaders(d.buf); err != nil {
			return nil, errBoltEntry
		}
	}
	return e, nil
}

type boltDecoder struct {
	buf []byte
	bad bool
}

func (d *boltDecoder) str() string {
	n, w := binary.Uvarint(d.buf)
	if w <= 0 || uint64(len(d.buf)-w) < n {
		d.bad = true
		return ""
	}
	s := string(d.buf[w : w+int(n)])
	d.buf = d.buf[w+int(n):]
	return s
}

func (d *boltDecoder) varint() int64 {
	v, w := binary.Varint(d.buf)
	if w <= 0 {
		d.bad = true
		return 0
	}
	d.buf = d.buf[w:]
	return v
}

// Interface guard
var _ queue.Store = (*Store)(nil)
