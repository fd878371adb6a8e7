package bolt

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// OpenTimeout is how long Open waits for another process to let go
// of the file before it gives up.
const OpenTimeout = time.Second

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
		db:        db,
		path:      path,
		now:       opts.Clock(),
		commits:   make(chan *boltCommit),
		done:      make(chan struct{}),
		sweepMax:  boltSweepBatch,
		claims:    make(map[string]string),
		claimFrom: make(map[string][]byte),
		lanes:     make(map[string]int),
		logger:    logger,
		hooks:     hooks,
		evicted:   opts.Evicted,
	}
	b.SetLimits(opts.Window, opts.MaxBacklog)
	b.SetMaxStored(opts.MaxStored)
	b.SetHistory(opts.History)
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
				return fmt.Errorf("the file's format is %q, this version reads %q only; it was left as it is: "+
					"move it aside to start with an empty store (formats are not migrated before the first release)", f, boltFormat)
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
		for _, name := range [][]byte{boltQueue, boltRequeued, boltBodies, boltRefs, boltSeen, boltExpiry, boltDead, boltDeadAt, boltWaiting, boltDueOf, boltRecords, boltDoneAt} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("bucket %s: %w", name, err)
			}
		}
		c := tx.Bucket(boltQueue).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			_, lane, _, _ := boltSplitLane(k)
			b.lanes[lane]++
			b.backlog++
		}
		b.dead = boltCountKeys(tx.Bucket(boltDead))
		b.keys = boltCountKeys(tx.Bucket(boltSeen))
		b.records = boltCountKeys(tx.Bucket(boltRecords))
		return nil
	})
	if err != nil {
		return fmt.Errorf("bolt store %s: %w", b.path, err)
	}
	return nil
}

var errBoltForeign = errors.New("foreign bucket")

func boltCountKeys(bk *bbolt.Bucket) int {
	n := 0
	c := bk.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	return n
}
