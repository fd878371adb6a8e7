package bolt

import (
	"bytes"
	"encoding/binary"

	"go.etcd.io/bbolt"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// The bytes kept (max_stored). The meta bucket holds, under boltStoredKey,
// queue.StoredSize of every queued payload and dead letter, as 8 bytes big
// endian. Every transaction that adds or removes a body updates it, so it
// is exact after a crash: it commits with the bodies or not at all. A
// burial or a replay moves a payload between queue and dead letters and
// leaves it as it is.

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

// boltSizeOf is what the payload id, whose record is rec, counts against
// max_stored: its body and its kept headers. A record that cannot be read
// counts its body only, as Admit could not have stored it so.
func boltSizeOf(tx *bbolt.Tx, id string, rec []byte) int64 {
	body := len(tx.Bucket(boltBodies).Get([]byte(id)))
	e, err := boltDecode(rec)
	if err != nil {
		return int64(body)
	}
	return queue.StoredSize(body, e.Request.Headers)
}

// boltEvict removes the oldest dead letters (by death) until need bytes are
// freed or none is left, in tx, and returns how many it removed and the
// bytes freed. The caller updates the stored count.
func boltEvict(tx *bbolt.Tx, need int64) (n int, freed int64, err error) {
	deadBk := tx.Bucket(boltDead)
	c := tx.Bucket(boltDeadAt).Cursor()
	var gone [][]byte
	for k, _ := c.First(); k != nil && freed < need; k, _ = c.Next() {
		gone = append(gone, bytes.Clone(k))
		if len(k) < 8 {
			continue // an index entry that names no letter
		}
		id := []byte(k[8:])
		v := deadBk.Get(id)
		if v == nil {
			continue // an index entry left behind
		}
		freed += boltSizeOf(tx, string(id), v)
		if err := deadBk.Delete(id); err != nil {
			return 0, 0, err
		}
		if err := tx.Bucket(boltBodies).Delete(id); err != nil {
			return 0, 0, err
		}
		n++
	}
	for _, k := range gone {
		if err := c.Bucket().Delete(k); err != nil {
			return 0, 0, err
		}
	}
	return n, freed, nil
}
