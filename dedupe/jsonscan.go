package dedupe

import (
	"bytes"
	"encoding/json"
	"hash"
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
	i := skipWS(doc, 0)
	if i >= len(doc) {
		return nil
	}
	v := doc[i:valueEnd(doc, i)]
	for _, e := range path {
		if len(v) == 0 {
			return nil
		}
		var next []byte
		switch v[0] {
		case '{':
			// The last of duplicate members wins, as in encoding/json
			// and JavaScript.
			it := iterate(v)
			for {
				k, val, ok := it.next()
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
			it := iterate(v)
			for n := 0; ; n++ {
				_, val, ok := it.next()
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
			i = stringEnd(v, i)
		case ' ', '\t', '\n', '\r':
			w.Write(v[start:i])
			i = skipWS(v, i)
			start = i
		default:
			i++
		}
	}
	w.Write(v[start:])
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// stringEnd returns the index just past the string whose opening quote is
// at b[i], or len(b) if it is unterminated.
func stringEnd(b []byte, i int) int {
	i++
	for i < len(b) {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return len(b)
		}
		i += j
		// The quote is escaped when an odd number of backslashes precede
		// it. Runs of backslashes are disjoint, so this stays linear.
		n := 0
		for k := i - 1; k >= 0 && b[k] == '\\'; k-- {
			n++
		}
		i++
		if n%2 == 0 {
			return i
		}
	}
	return len(b)
}

// valueEnd returns the index just past the value starting at b[i].
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return len(b)
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = stringEnd(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(b)
	}
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ':', ' ', '\t', '\n', '\r':
			return i
		}
		i++
	}
	return i
}

// jsonIter walks the members of an object or the elements of an array.
type jsonIter struct {
	b   []byte
	i   int
	obj bool
}

// iterate starts walking v, which must begin with '{' or '['.
func iterate(v []byte) jsonIter {
	return jsonIter{b: v, i: 1, obj: len(v) > 0 && v[0] == '{'}
}

// next returns the next member's raw name (without quotes, escapes kept)
// and value, or the next element's value; ok is false at the end.
func (it *jsonIter) next() (key, val []byte, ok bool) {
	b := it.b
	i := skipWS(b, it.i)
	if i < len(b) && b[i] == ',' {
		i = skipWS(b, i+1)
	}
	if i >= len(b) || b[i] == '}' || b[i] == ']' {
		it.i = len(b)
		return nil, nil, false
	}
	if it.obj {
		if b[i] != '"' {
			it.i = len(b)
			return nil, nil, false
		}
		e := stringEnd(b, i)
		key = b[i+1 : max(i+1, e-1)]
		i = skipWS(b, e)
		if i >= len(b) || b[i] != ':' {
			it.i = len(b)
			return nil, nil, false
		}
		i = skipWS(b, i+1)
	}
	e := valueEnd(b, i)
	if e <= i {
		it.i = len(b)
		return nil, nil, false
	}
	it.i = e
	return key, b[i:e], true
}
