package dedupe

import (
	"bytes"
	"encoding/json"
	"hash"

	"github.com/hookrelay/caddy-webhook-relay/internal/jsonscan"
)

// The scanner below walks JSON already checked by json.Valid. It never
// recurses and never copies: values are subslices of the body, and a
// multi-megabyte string (a base64 image) is skipped with bytes.IndexByte.
// It is handwritten rather than gjson because gjson's []byte API returns
// every result as a fresh copy and its iteration unescapes each string it
// visits (a 10 MiB base64 image with "\/" escapes would be copied), and
// because duplicate members must resolve as in encoding/json (last wins).
// Its functions stay in bounds on any input, valid or not.

// lookupJSON returns the value at path in the valid JSON doc, or nil when
// it is missing, null, false, true or an empty string: a value that cannot
// tell payloads apart must not make them duplicates.
func lookupJSON(doc []byte, path []pathElem) []byte {
	i := jsonscan.SkipWS(doc, 0)
	if i >= len(doc) {
		return nil
	}
	v := doc[i:jsonscan.ValueEnd(doc, i)]
	for _, e := range path {
		if len(v) == 0 {
			return nil
		}
		var next []byte
		switch v[0] {
		case '{':
			// The last of duplicate members wins, as in encoding/json
			// and JavaScript.
			it := jsonscan.Iterate(v)
			for {
				k, val, ok := it.Next()
				if !ok {
					break
				}
				if nameIs(k, e.name) {
					next = val
				}
			}
		case '[':
			if e.index < 0 {
				return nil
			}
			it := jsonscan.Iterate(v)
			for n := 0; ; n++ {
				_, val, ok := it.Next()
				if !ok {
					break
				}
				if n == e.index {
					next = val
					break
				}
			}
		}
		if next == nil {
			return nil
		}
		v = next
	}
	if len(v) == 0 {
		return nil
	}
	switch v[0] {
	case 'n', 't', 'f':
		return nil
	case '"':
		if len(v) <= 2 {
			return nil
		}
	}
	return v
}

// nameIs reports whether the raw (still escaped) member name k is name.
func nameIs(k []byte, name string) bool {
	if bytes.IndexByte(k, '\\') < 0 {
		return string(k) == name
	}
	// Escaped names are rare. An escape spells at most 6 bytes per byte
	// of the name, so longer raw names cannot match and are not decoded.
	if len(k) > 6*len(name) {
		return false
	}
	return unescapeName(k) == name
}

// unescapeName decodes an escaped JSON string's content.
func unescapeName(k []byte) string {
	q := make([]byte, 0, len(k)+2)
	q = append(q, '"')
	q = append(q, k...)
	q = append(q, '"')
	var s string
	if json.Unmarshal(q, &s) != nil {
		return ""
	}
	return s
}

// writeCompact writes valid JSON v to w without whitespace outside strings,
// in spans of v: nothing is copied.
func writeCompact(w hash.Hash, v []byte) {
	start := 0
	for i := 0; i < len(v); {
		switch v[i] {
		case '"':
			i = jsonscan.StringEnd(v, i)
		case ' ', '\t', '\n', '\r':
			w.Write(v[start:i])
			i = jsonscan.SkipWS(v, i)
			start = i
		default:
			i++
		}
	}
	w.Write(v[start:])
}
