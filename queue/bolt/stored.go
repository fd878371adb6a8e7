package bolt

import (
	"bytes"
	"encoding/binary"
	"math"

	"go.etcd.io/bbolt"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// The bytes kept (max_stored). The meta bucket holds, under boltStoredKey,
// queue.StoredSize of every payload with a delivery queued or dead or a
// record, once however many it has, and queue.RecordCharge per record, as
// 8 bytes big endian. Every transaction that adds
// or removes a body updates it, so it is exact after a crash: it commits
// with the bodies or not at all. A burial or a replay moves a delivery
// between queue and dead letters and leaves it as it is.

var boltStoredKey = []byte("stored")

// boltStored reads the bytes kept.
func boltStored(tx *bbolt.Tx) int64 {
	v := tx.Bucket(boltMeta).Get(boltStoredKey)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// boltAddStored adds delta to the bytes kept, never going below zero.
func boltAddStored(tx *bbolt.Tx, delta int64) error {
	if delta == 0 {
		return nil
	}
	n := max(boltStored(tx)+delta, 0)
	return tx.Bucket(boltMeta).Put(boltStoredKey, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// boltSizeOf is what payload, one of whose deliveries has the record rec,
// counts against max_stored: its body and its kept headers. A record that
// cannot be read counts the body only, as Admit could not have stored it
// so.
func boltSizeOf(tx *bbolt.Tx, payload []byte, rec []byte) int64 {
	body := len(tx.Bucket(boltBodies).Get(payload))
	e, err := boltDecode(rec)
	if err != nil {
		return int64(body)
	}
	return queue.StoredSize(body, e.Request.Headers)
}

// boltUnref lets go of one delivery's hold on its payload's body: id,
// whose record (queued or dead) is rec, is being removed. The last one
// deletes the body and gives back what the payload counted against
// max_stored, which it returns.
func boltUnref(tx *bbolt.Tx, id string, rec []byte) (int64, error) {
	payload := []byte(boltPayload(id, rec))
	return boltUnrefPayload(tx, payload, func() int64 { return boltSizeOf(tx, payload, rec) })
}

// boltUnrefPayload lets go of one hold (a delivery's or its record's) on
// payload's body; the last one deletes it and gives back size(), which it
// returns.
func boltUnrefPayload(tx *bbolt.Tx, payload []byte, size func() int64) (int64, error) {
	refs := tx.Bucket(boltRefs)
	if v := refs.Get(payload); v != nil {
		if n, w := binary.Uvarint(v); w > 0 && n > 2 {
			return 0, refs.Put(payload, binary.AppendUvarint(nil, n-1))
		} else if w > 0 && n == 2 {
			return 0, refs.Delete(payload) // one left: no entry
		}
		if err := refs.Delete(payload); err != nil {
			return 0, err
		}
	}
	n := size()
	if err := tx.Bucket(boltBodies).Delete(payload); err != nil {
		return 0, err
	}
	return n, boltAddStored(tx, -n)
}

// boltRef adds n holds on payload's body, which is kept.
func boltRef(tx *bbolt.Tx, payload []byte, n int) error {
	refs := tx.Bucket(boltRefs)
	have := uint64(1) // no entry: one
	if v := refs.Get(payload); v != nil {
		if c, w := binary.Uvarint(v); w > 0 {
			have = c
		}
	}
	return refs.Put(payload, binary.AppendUvarint(nil, have+uint64(n)))
}

// boltEvict frees need bytes, or as many as it can, in tx: the records of
// done payloads give way first (oldest Done first), then the oldest dead
// letters (by death). It returns how many letters and records it removed.
// A letter or a record frees its payload's bytes only if it held the last
// reference to them.
func boltEvict(tx *bbolt.Tx, need int64) (dead, records int, err error) {
	records, freed, err := boltTrimRecords(tx, 0, math.MaxInt, need)
	if err != nil || freed >= need {
		return 0, records, err
	}
	need -= freed
	deadBk := tx.Bucket(boltDead)
	c := tx.Bucket(boltDeadAt).Cursor()
	var gone [][]byte
	freed = 0
	for k, _ := c.First(); k != nil && freed < need; k, _ = c.Next() {
		gone = append(gone, bytes.Clone(k))
		if len(k) < 8 {
			continue // an index entry that names no letter
		}
		id := bytes.Clone(k[8:])
		v := deadBk.Get(id)
		if v == nil {
			continue // an index entry left behind
		}
		f, err := boltUnref(tx, string(id), v)
		if err != nil {
			return 0, 0, err
		}
		freed += f
		if err := deadBk.Delete(id); err != nil {
			return 0, 0, err
		}
		dead++
	}
	for _, k := range gone {
		if err := c.Bucket().Delete(k); err != nil {
			return 0, 0, err
		}
	}
	return dead, records, nil
}
