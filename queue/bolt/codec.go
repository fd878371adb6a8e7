package bolt

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strconv"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

const (
	boltMaxRawKey   = 512 // longer dedupe keys are stored as their SHA-256
	boltIDWidth     = 20  // digits of an id: uint64 fits, and ids sort as strings
	boltEntryFormat = 4   // the first byte of every entry record
)

// Entry encoding: the format byte boltEntryFormat, then ID, Payload, Key,
// Destination and the request fields as length-prefixed strings, Received and Queued as Unix
// nanoseconds, Attempts, LastStatus, LastError, Died (Unix nanoseconds, 0
// while queued), TraceParent and TraceState, and the kept headers
// (queue.AppendHeaders). A record of any
// other format is malformed. Bodies are kept raw in their own bucket, so
// recording an attempt or burying never rewrites them.

func boltEncode(e *queue.Entry) []byte {
	n := 1 + 12*8 + len(e.ID) + len(e.Payload) + len(e.Key) + len(e.Destination) + len(e.Request.RawQuery) + len(e.Request.ContentType) +
		len(e.Request.UserAgent) + len(e.Request.ForwardedFor) + len(e.LastError) +
		len(e.Request.TraceParent) + len(e.Request.TraceState)
	buf := make([]byte, 0, n)
	buf = append(buf, boltEntryFormat)
	for _, s := range []string{e.ID, e.Payload, e.Key, e.Destination, e.Request.RawQuery, e.Request.ContentType, e.Request.UserAgent, e.Request.ForwardedFor} {
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
	for _, s := range []string{e.Request.TraceParent, e.Request.TraceState} {
		buf = binary.AppendUvarint(buf, uint64(len(s)))
		buf = append(buf, s...)
	}
	return queue.AppendHeaders(buf, e.Request.Headers)
}

var errBoltEntry = errors.New("malformed entry")

// boltEntryID reads only the ID of an encoded entry, "" if it is malformed.
func boltEntryID(v []byte) string {
	if len(v) < 2 || v[0] != boltEntryFormat {
		return ""
	}
	n, w := binary.Uvarint(v[1:])
	if w <= 0 || uint64(len(v)-1-w) < n {
		return ""
	}
	return string(v[1+w : 1+w+int(n)])
}

// boltPayload is the payload of the delivery id whose record is v: the
// record's, else (a record that cannot be read) the payload ID that id
// starts with, as every bolt delivery ID does.
func boltPayload(id string, v []byte) string {
	if len(v) >= 2 && v[0] == boltEntryFormat {
		d := boltDecoder{buf: v[1:]}
		d.str()
		if p := d.str(); !d.bad && p != "" {
			return p
		}
	}
	return boltPayloadOf(id)
}

// boltPayloadOf is the payload ID a delivery ID starts with.
func boltPayloadOf(id string) string {
	if len(id) > boltIDWidth && id[boltIDWidth:boltIDWidth+len(queue.DeliverySep)] == queue.DeliverySep {
		return id[:boltIDWidth]
	}
	return id
}

func boltDecode(v []byte) (*queue.Entry, error) {
	if len(v) < 1 || v[0] != boltEntryFormat {
		return nil, errBoltEntry
	}
	d := boltDecoder{buf: v[1:]}
	e := &queue.Entry{
		ID:          d.str(),
		Payload:     d.str(),
		Key:         d.str(),
		Destination: d.str(),
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
	if died := d.varint(); died != 0 {
		e.Died = time.Unix(0, died)
	}
	e.Request.TraceParent = d.str()
	e.Request.TraceState = d.str()
	if d.bad {
		return nil, errBoltEntry
	}
	var err error
	if e.Request.Headers, _, err = queue.ReadHeaders(d.buf); err != nil {
		return nil, errBoltEntry
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

// boltDeadAtKey is an entry's key in the index of dead letters by death.
func boltDeadAtKey(died time.Time, id string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(died.UnixNano())), id...)
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

// boltLane is the prefix of a lane's keys in the queue and waiting buckets:
// the destination's length (uvarint) and its name. Uvarints are
// prefix-free, so one lane's prefix never starts another lane's key.
func boltLane(dest string) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(dest))), dest...)
}

// boltLaneKey is the key of rest in dest's lane.
func boltLaneKey(dest string, rest string) []byte {
	return append(boltLane(dest), rest...)
}

// boltSplitLane splits a key of the queue or waiting bucket into its lane's
// prefix, the destination and the rest; ok is false for a key of no lane.
func boltSplitLane(k []byte) (prefix []byte, dest string, rest []byte, ok bool) {
	n, w := binary.Uvarint(k)
	if w <= 0 || uint64(len(k)-w) < n {
		return nil, "", nil, false
	}
	end := w + int(n)
	return k[:end], string(k[w:end]), k[end:], true
}
