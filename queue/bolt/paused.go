package bolt

import (
	"bytes"
	"context"

	"go.etcd.io/bbolt"
)

// The paused destinations are keys of the meta bucket, boltPausedPrefix
// followed by the destination's name, with no value: kept in the file, a
// pause survives a restart.
var boltPausedPrefix = []byte("paused/")

// SetPaused implements queue.Store. It commits (fsync) before it returns.
func (b *Store) SetPaused(ctx context.Context, destination string, paused bool) error {
	if err := b.usable(ctx); err != nil {
		return err
	}
	key := append(bytes.Clone(boltPausedPrefix), destination...)
	err := b.db.Update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(boltMeta)
		if paused {
			return meta.Put(key, []byte{})
		}
		return meta.Delete(key)
	})
	return b.storeErr(err)
}

// Paused implements queue.Store.
func (b *Store) Paused(ctx context.Context) ([]string, error) {
	if err := b.usable(ctx); err != nil {
		return nil, err
	}
	out := []string{}
	err := b.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(boltMeta).Cursor()
		for k, _ := c.Seek(boltPausedPrefix); k != nil && bytes.HasPrefix(k, boltPausedPrefix); k, _ = c.Next() {
			out = append(out, string(k[len(boltPausedPrefix):]))
		}
		return nil
	})
	if err != nil {
		return nil, b.storeErr(err)
	}
	return out, nil
}
