package bolt

import (
	"errors"
	"fmt"
	"runtime"

	"go.etcd.io/bbolt"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

const (
	boltMaxBatch = 1000 // calls sharing one commit
	// bytes of values one commit writes, about: bbolt copies them into
	// page buffers, held until the commit ends
	boltMaxBatchBytes = 16 << 20
	boltMaxYields     = 8 // yields while gathering a group; see gather
)

// Group commit. Writes go through one committer goroutine that runs every
// call waiting at that moment in one transaction and one fsync: an idle
// store commits a lone call at once, a busy one batches whatever arrived
// during the previous commit. Like bbolt's DB.Batch, a call's function may
// run more than once (when another call in its transaction fails, the
// others are run again without it), so it must set its results afresh on
// every run; the results of the run that committed are the ones that count.

type boltCommit struct {
	fn   func(*bbolt.Tx) error
	size int        // bytes of values it writes, about
	done chan error // nil: nobody waits (see failed)
	// failed is told the error of a call nobody waits for
	failed   func(error)
	answered bool // the committer's: done has the result
}

// answer gives the call its result, once: a call answered already keeps
// its answer when a panic cuts its group short afterwards.
func (c *boltCommit) answer(err error) {
	if c.answered {
		return
	}
	c.answered = true
	switch {
	case c.done != nil:
		c.done <- err
	case err != nil && c.failed != nil:
		c.failed(err)
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
