// Package jsonscan finds the bounds of JSON values in a body without
// decoding it: the dedupe keys and the destinations' filters read only the
// members they need, so a 6 MiB base64 image they do not read is crossed,
// never copied. The functions expect valid JSON and stay in bounds on any
// input.
package jsonscan

import "bytes"

// SkipWS returns the index of the first byte at or after i that is not
// JSON whitespace.
func SkipWS(b []byte, i int) int {
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

// StringEnd returns the index just past the string whose opening quote is
// at b[i], or len(b) if it is unterminated.
func StringEnd(b []byte, i int) int {
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

// ValueEnd returns the index just past the value starting at b[i].
func ValueEnd(b []byte, i int) int {
	if i >= len(b) {
		return len(b)
	}
	switch b[i] {
	case '"':
		return StringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = StringEnd(b, i)
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

// Iter walks the members of an object or the elements of an array.
type Iter struct {
	b   []byte
	i   int
	obj bool
}

// Iterate starts walking v, which must begin with '{' or '['.
func Iterate(v []byte) Iter {
	return Iter{b: v, i: 1, obj: len(v) > 0 && v[0] == '{'}
}

// Next returns the next member's raw name (without quotes, escapes kept)
// and value, or the next element's value; ok is false at the end.
func (it *Iter) Next() (key, val []byte, ok bool) {
	b := it.b
	i := SkipWS(b, it.i)
	if i < len(b) && b[i] == ',' {
		i = SkipWS(b, i+1)
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
		e := StringEnd(b, i)
		key = b[i+1 : max(i+1, e-1)]
		i = SkipWS(b, e)
		if i >= len(b) || b[i] != ':' {
			it.i = len(b)
			return nil, nil, false
		}
		i = SkipWS(b, i+1)
	}
	e := ValueEnd(b, i)
	if e <= i {
		it.i = len(b)
		return nil, nil, false
	}
	it.i = e
	return key, b[i:e], true
}
