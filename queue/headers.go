package queue

import (
	"encoding/binary"
	"errors"
)

// HeaderField is one incoming header kept with a payload for the upstream:
// a signature scheme's own headers, and those listed in forward_headers.
type HeaderField struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// AppendHeaders appends fields to buf in the form stores keep them: their
// count, then each name and value, each length-prefixed (uvarint).
func AppendHeaders(buf []byte, fields []HeaderField) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(fields)))
	for _, f := range fields {
		buf = binary.AppendUvarint(buf, uint64(len(f.Name)))
		buf = append(buf, f.Name...)
		buf = binary.AppendUvarint(buf, uint64(len(f.Value)))
		buf = append(buf, f.Value...)
	}
	return buf
}

var errHeaders = errors.New("malformed stored headers")

// ReadHeaders decodes what AppendHeaders wrote at the start of buf and
// returns the rest of buf after it.
func ReadHeaders(buf []byte) ([]HeaderField, []byte, error) {
	n, w := binary.Uvarint(buf)
	// every field takes two bytes at least: a bound before allocating
	if w <= 0 || n > uint64(len(buf)-w)/2 {
		return nil, nil, errHeaders
	}
	buf = buf[w:]
	if n == 0 {
		return nil, buf, nil
	}
	fields := make([]HeaderField, n)
	for i := range fields {
		var ok bool
		if fields[i].Name, buf, ok = readString(buf); !ok {
			return nil, nil, errHeaders
		}
		if fields[i].Value, buf, ok = readString(buf); !ok {
			return nil, nil, errHeaders
		}
	}
	return fields, buf, nil
}

func readString(buf []byte) (string, []byte, bool) {
	n, w := binary.Uvarint(buf)
	if w <= 0 || uint64(len(buf)-w) < n {
		return "", nil, false
	}
	return string(buf[w : w+int(n)]), buf[w+int(n):], true
}
