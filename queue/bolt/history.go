package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// Records (queue.Histories). A payload's record is kept in the records
// bucket under the payload's ID, so a reverse cursor lists them newest
// first; once it is done it is indexed by when (doneAt), so that
// TrimHistory and the eviction under max_stored take the oldest done
// without looking at the others. A record holds one reference on its
// payload's body (refs) and counts queue.RecordCharge in the bytes kept.

const boltRecordFormat = 1 // the first byte of every record

// Record encoding: the format byte, Key, Received, State, Done (0: not
// done), BodySize, AttemptsLeftOut, the request fields, the deliveries
// (count, then each: destination, state, attempts, done; the ID is the
// payload's DeliveryID), the attempts (count, then each: its
// destination's index plus one, or 0 and the name, at, status, duration,
// error), and the kept headers. The ID is the bucket's key. States are
// one byte each.

var boltStates = []string{queue.StateQueued, queue.StateRetrying, queue.StateDelivered, queue.StateDead}

func boltStateCode(s string) uint64 {
	for i, name := range boltStates {
		if name == s {
			return uint64(i)
		}
	}
	return 0
}

func boltStateName(c uint64) string {
	if c < uint64(len(boltStates)) {
		return boltStates[c]
	}
	return ""
}

func boltTimeNS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// boltTime reads what boltTimeNS wrote, in UTC (the location is not kept).
func boltTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func boltEncodeRecord(r *queue.Record) []byte {
	buf := make([]byte, 0, 128+len(r.Key)+64*len(r.Attempts))
	str := func(s string) {
		buf = binary.AppendUvarint(buf, uint64(len(s)))
		buf = append(buf, s...)
	}
	buf = append(buf, boltRecordFormat)
	str(r.Key)
	buf = binary.AppendVarint(buf, boltTimeNS(r.Received))
	buf = binary.AppendUvarint(buf, boltStateCode(r.State))
	buf = binary.AppendVarint(buf, boltTimeNS(r.Done))
	buf = binary.AppendUvarint(buf, uint64(r.BodySize))
	buf = binary.AppendUvarint(buf, uint64(r.AttemptsLeftOut))
	q := &r.Request
	for _, s := range []string{q.RawQuery, q.ContentType, q.UserAgent, q.ForwardedFor, q.TraceParent, q.TraceState} {
		str(s)
	}
	buf = binary.AppendUvarint(buf, uint64(len(r.Destinations)))
	for _, d := range r.Destinations {
		str(d.Destination)
		buf = binary.AppendUvarint(buf, boltStateCode(d.State))
		buf = binary.AppendUvarint(buf, uint64(d.Attempts))
		buf = binary.AppendVarint(buf, boltTimeNS(d.Done))
	}
	buf = binary.AppendUvarint(buf, uint64(len(r.Attempts)))
	for _, a := range r.Attempts {
		dest := 0
		for i, d := range r.Destinations {
			if d.Destination == a.Destination {
				dest = i + 1
				break
			}
		}
		buf = binary.AppendUvarint(buf, uint64(dest))
		if dest == 0 {
			str(a.Destination)
		}
		buf = binary.AppendVarint(buf, boltTimeNS(a.At))
		buf = binary.AppendVarint(buf, int64(a.Status))
		buf = binary.AppendVarint(buf, a.DurationMS)
		str(a.Error)
	}
	return queue.AppendHeaders(buf, r.Request.Headers)
}

var errBoltRecord = errors.New("malformed record")

func boltDecodeRecord(id string, v []byte) (*queue.Record, error) {
	if len(v) < 1 || v[0] != boltRecordFormat {
		return nil, errBoltRecord
	}
	d := boltDecoder{buf: v[1:]}
	uv := func() uint64 {
		n, w := binary.Uvarint(d.buf)
		if w <= 0 {
			d.bad = true
			return 0
		}
		d.buf = d.buf[w:]
		return n
	}
	r := &queue.Record{ID: id, Key: d.str()}
	r.Received = boltTime(d.varint())
	r.State = boltStateName(uv())
	r.Done = boltTime(d.varint())
	r.BodySize = int(uv())
	r.AttemptsLeftOut = int(uv())
	q := &r.Request
	q.RawQuery, q.ContentType, q.UserAgent, q.ForwardedFor, q.TraceParent, q.TraceState = d.str(), d.str(), d.str(), d.str(), d.str(), d.str()
	n := uv()
	if d.bad || n > uint64(len(d.buf)) {
		return nil, errBoltRecord
	}
	r.Destinations = make([]queue.DeliveryState, n)
	for i := range r.Destinations {
		ds := &r.Destinations[i]
		ds.Destination = d.str()
		ds.ID = queue.DeliveryID(id, ds.Destination, n == 1)
		ds.State = boltStateName(uv())
		ds.Attempts = int(uv())
		ds.Done = boltTime(d.varint())
	}
	n = uv()
	if d.bad || n > uint64(len(d.buf)) {
		return nil, errBoltRecord
	}
	r.Attempts = make([]queue.Attempt, n)
	for i := range r.Attempts {
		a := &r.Attempts[i]
		if dest := uv(); dest == 0 {
			a.Destination = d.str()
		} else if dest <= uint64(len(r.Destinations)) {
			a.Destination = r.Destinations[dest-1].Destination
		} else {
			d.bad = true
		}
		a.At = boltTime(d.varint())
		a.Status = int(d.varint())
		a.DurationMS = d.varint()
		a.Error = d.str()
	}
	if d.bad {
		return nil, errBoltRecord
	}
	var err error
	if r.Request.Headers, _, err = queue.ReadHeaders(d.buf); err != nil {
		return nil, errBoltRecord
	}
	return r, nil
}

// boltDoneKey is a done record's key in the doneAt index.
func boltDoneKey(done time.Time, id string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(done.UnixNano())), id...)
}

// boltPutRecord writes r, whose Done was before (zero: not done), and
// moves it in the doneAt index if Done changed.
func boltPutRecord(tx *bbolt.Tx, r *queue.Record, before time.Time) error {
	if !before.Equal(r.Done) {
		idx := tx.Bucket(boltDoneAt)
		if !before.IsZero() {
			if err := idx.Delete(boltDoneKey(before, r.ID)); err != nil {
				return err
			}
		}
		if !r.Done.IsZero() {
			if err := idx.Put(boltDoneKey(r.Done, r.ID), nil); err != nil {
				return err
			}
		}
	}
	return tx.Bucket(boltRecords).Put([]byte(r.ID), boltEncodeRecord(r))
}

// boltUpdateRecord applies fn to the record id, if there is one that can
// be read, and writes it back.
func boltUpdateRecord(tx *bbolt.Tx, id string, fn func(r *queue.Record) bool) error {
	v := tx.Bucket(boltRecords).Get([]byte(id))
	if v == nil {
		return nil
	}
	r, err := boltDecodeRecord(id, v)
	if err != nil {
		return nil // left as it is: a delivery never fails for its record
	}
	before := r.Done
	if !fn(r) {
		return nil
	}
	return boltPutRecord(tx, r, before)
}

// boltDropRecord removes the record id (stored as v) with its index entry
// and its hold on the body, and returns the bytes it freed.
func boltDropRecord(tx *bbolt.Tx, id []byte, v []byte) (int64, error) {
	var headers []queue.HeaderField
	if r, err := boltDecodeRecord(string(id), v); err == nil {
		headers = r.Request.Headers
		if !r.Done.IsZero() {
			if err := tx.Bucket(boltDoneAt).Delete(boltDoneKey(r.Done, r.ID)); err != nil {
				return 0, err
			}
		}
	}
	if err := tx.Bucket(boltRecords).Delete(id); err != nil {
		return 0, err
	}
	freed, err := boltUnrefPayload(tx, id, func() int64 {
		return queue.StoredSize(len(tx.Bucket(boltBodies).Get(id)), headers)
	})
	if err != nil {
		return 0, err
	}
	return freed + queue.RecordCharge, boltAddStored(tx, -queue.RecordCharge)
}

// boltTrimRecords removes done records, oldest Done first: those done at
// or before cutoff (Unix ns), at most limit, or (need > 0) until need
// bytes are freed. It returns how many it removed and the bytes freed.
func boltTrimRecords(tx *bbolt.Tx, cutoff int64, limit int, need int64) (n int, freed int64, err error) {
	records := tx.Bucket(boltRecords)
	c := tx.Bucket(boltDoneAt).Cursor()
	var gone [][]byte
	for k, _ := c.First(); k != nil && n < limit && (need <= 0 || freed < need); k, _ = c.Next() {
		if len(k) < 8 {
			gone = append(gone, bytes.Clone(k)) // names no record
			continue
		}
		if need <= 0 && int64(binary.BigEndian.Uint64(k)) > cutoff {
			break
		}
		gone = append(gone, bytes.Clone(k))
		id := bytes.Clone(k[8:])
		v := records.Get(id)
		if v == nil {
			continue // an index entry left behind
		}
		f, err := boltDropRecord(tx, id, v)
		if err != nil {
			return 0, 0, err
		}
		freed += f
		n++
	}
	for _, k := range gone {
		if err := c.Bucket().Delete(k); err != nil {
			return 0, 0, err
		}
	}
	return n, freed, nil
}

// TrimHistory implements queue.Recorder, in one commit of at most limit
// records.
func (b *Store) TrimHistory(ctx context.Context, limit int) (int, error) {
	if err := b.usable(ctx); err != nil {
		return 0, err
	}
	cutoff := b.now().Add(-b.History()).UnixNano()
	var n int
	err := b.write(func(tx *bbolt.Tx) error {
		var err error
		n, _, err = boltTrimRecords(tx, cutoff, limit, 0)
		return err
	})
	if err != nil {
		return 0, err
	}
	b.countRecords(-n)
	return n, nil
}

func (b *Store) countRecords(n int) {
	b.countMu.Lock()
	defer b.countMu.Unlock()
	b.records += n
}

// Attempted implements queue.Recorder. The update is handed to the
// committer without waiting for its commit: the Ack, Retry or Bury that
// follows it commits in the same group or a later one, so one fsync
// serves both and the record has the attempt once they return. An error
// is logged: a delivery never fails for its record.
func (b *Store) Attempted(ctx context.Context, e *queue.Entry, a queue.Attempt, state string) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	if b.History() == 0 {
		b.countMu.Lock()
		none := b.records == 0
		b.countMu.Unlock()
		if none {
			return nil // history off and no record left: nothing to commit
		}
	}
	id, payload := e.ID, e.Payload
	if payload == "" {
		payload = boltPayloadOf(id)
	}
	c := &boltCommit{
		fn: func(tx *bbolt.Tx) error {
			return boltUpdateRecord(tx, payload, func(r *queue.Record) bool { return r.Attempted(id, a, state) })
		},
		size: 256,
		failed: func(err error) {
			b.logger.Warn("the attempt was not recorded in the payload's history",
				zap.String("path", b.path), zap.String("id", id), zap.Error(err))
		},
	}
	select {
	case b.commits <- c:
		return nil
	case <-b.done:
		return queue.ErrClosed
	}
}

// Events implements queue.Store: a reverse cursor from q.Before over the
// records, looking at q.Scan of them at most.
func (b *Store) Events(ctx context.Context, q queue.EventQuery) ([]*queue.Record, string, error) {
	if err := b.usable(ctx); err != nil {
		return nil, "", err
	}
	scan := q.Scan
	if scan <= 0 {
		scan = queue.DefaultEventScan
	}
	out := []*queue.Record{}
	next := ""
	err := b.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(boltRecords).Cursor()
		var k, v []byte
		if q.Before == "" {
			k, v = c.Last()
		} else if k, _ = c.Seek([]byte(q.Before)); k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
		var last []byte
		for looked := 0; k != nil && len(out) < q.Limit && looked < scan; k, v = c.Prev() {
			looked++
			last = k
			r, err := boltDecodeRecord(string(k), v)
			if err != nil {
				continue // one that cannot be read is passed over
			}
			if q.Matches(r) {
				out = append(out, r)
			}
		}
		switch {
		case k == nil:
		case last != nil:
			next = string(last)
		default:
			next = q.Before // looked at none: the same page again
		}
		return nil
	})
	if err != nil {
		return nil, "", b.storeErr(err)
	}
	return out, next, nil
}

// Event implements queue.Store.
func (b *Store) Event(ctx context.Context, id string) (*queue.Record, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	var r *queue.Record
	err := b.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(boltRecords).Get([]byte(id))
		if v == nil {
			return nil
		}
		var err error
		if r, err = boltDecodeRecord(id, v); err != nil {
			return fmt.Errorf("record %s: %w", id, err)
		}
		r.Body = bytes.Clone(tx.Bucket(boltBodies).Get([]byte(id)))
		if r.Body == nil {
			r.Body = []byte{}
		}
		return nil
	})
	if err != nil {
		return nil, b.storeErr(err)
	}
	if r == nil {
		return nil, fmt.Errorf("record %s: %w", id, queue.ErrNotFound)
	}
	return r, nil
}

// Resend implements queue.Store. The delivered deliveries go back in
// their lanes as a replay puts them: at the back, under a fresh queue key
// (requeued), with their own IDs; each holds the body once more. One that
// is queued already (acked after its attempt was recorded, say) is left.
// MaxBacklog does not apply: a resend is an operator's decision.
func (b *Store) Resend(ctx context.Context, id string) (int, error) {
	if err := b.usable(ctx); err != nil {
		return 0, err
	}
	now := b.now()
	var (
		found bool
		lanes []string
	)
	err := b.write(func(tx *bbolt.Tx) error {
		found, lanes = false, lanes[:0]
		v := tx.Bucket(boltRecords).Get([]byte(id))
		if v == nil {
			return nil
		}
		found = true
		r, err := boltDecodeRecord(id, v)
		if err != nil {
			return fmt.Errorf("record %s: %w", id, err)
		}
		before := r.Done
		qb, requeued := tx.Bucket(boltQueue), tx.Bucket(boltRequeued)
		for _, d := range r.Destinations {
			if d.State != queue.StateDelivered || boltQueueKey(tx, d.Destination, d.ID) != nil {
				continue
			}
			e := queue.Entry{ID: d.ID, Payload: id, Key: r.Key, Destination: d.Destination, Request: r.Request,
				Received: r.Received, Queued: now}
			seq, err := qb.NextSequence()
			if err != nil {
				return err
			}
			qk := boltLaneKey(d.Destination, boltID(seq))
			if err := qb.Put(qk, boltEncode(&e)); err != nil {
				return err
			}
			if err := requeued.Put([]byte(d.ID), qk); err != nil {
				return err
			}
			r.Requeued(d.ID)
			lanes = append(lanes, d.Destination)
		}
		if len(lanes) == 0 {
			return nil
		}
		if err := boltRef(tx, []byte(id), len(lanes)); err != nil {
			return err
		}
		return boltPutRecord(tx, r, before)
	})
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("record %s: %w", id, queue.ErrNotFound)
	}
	for _, lane := range lanes {
		b.count(lane, 1, 0)
	}
	return len(lanes), nil
}

// Attempted implements queue.Recorder.
func (l storeLane) Attempted(ctx context.Context, e *queue.Entry, a queue.Attempt, state string) error {
	return l.b.Attempted(ctx, e, a, state)
}

// TrimHistory implements queue.Recorder: the store's records, every
// lane's.
func (l storeLane) TrimHistory(ctx context.Context, limit int) (int, error) {
	return l.b.TrimHistory(ctx, limit)
}

var (
	_ queue.Recorder = (*Store)(nil)
	_ queue.Recorder = storeLane{}
)
