package filter

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"

	"github.com/hookrelay/caddy-webhook-relay/internal/jsonscan"
)

// ParseBody prepares a body for the filters of every destination, once per
// payload: nil when it is not JSON (the filters then see null), else the
// value to put in Input.Body.
//
// The body is read lazily: an object's members are located when a filter
// first reads the object, and a value is decoded only when a filter reads
// it. A 6 MiB base64 image in a member no filter reads is skipped, never
// copied. Objects are maps, arrays lists, a number that is an integer
// within int64 an int (an id like 7532114250969985124 keeps every digit),
// any other number a double; of duplicate members the last wins, as in
// encoding/json. What a filter decodes is kept for the next filter of the
// same payload, so the value is for one goroutine: a payload's filters run
// one after another.
func ParseBody(body []byte) any {
	if !json.Valid(body) {
		return nil
	}
	return ParseValidBody(body)
}

// ParseValidBody is ParseBody for a body the caller has already checked
// with json.Valid (the dedupe keys do), which it does not check again.
func ParseValidBody(body []byte) any {
	i := jsonscan.SkipWS(body, 0)
	if i >= len(body) {
		return nil
	}
	return lazy.convert(body[i:jsonscan.ValueEnd(body, i)])
}

// rawJSON is one valid JSON value, not yet decoded.
type rawJSON []byte

// node is a member or element not yet decoded, and its value once one
// filter read it: every filter of a payload reads the same parse, so a
// member is scanned and converted once, however many filters read it. A
// payload's filters run one after another, never at once.
type node struct {
	raw rawJSON
	val ref.Val
}

// lazyAdapter turns a node into a CEL value when CEL reads it: the maps and
// lists it makes hold nodes and convert each member or element with it on
// first access.
type lazyAdapter struct{}

var lazy lazyAdapter

func (a lazyAdapter) NativeToValue(v any) ref.Val {
	if n, ok := v.(*node); ok {
		if n.val == nil {
			n.val = a.convert(n.raw)
		}
		return n.val
	}
	return types.DefaultTypeAdapter.NativeToValue(v)
}

func (a lazyAdapter) convert(r rawJSON) ref.Val {
	if len(r) == 0 {
		return types.NullValue
	}
	switch r[0] {
	case '{':
		return types.NewStringInterfaceMap(a, members(r))
	case '[':
		return types.NewDynamicList(a, elements(r))
	case '"':
		return types.String(decodeString(r))
	case 't':
		return types.True
	case 'f':
		return types.False
	case 'n':
		return types.NullValue
	}
	if n, err := strconv.ParseInt(string(r), 10, 64); err == nil {
		return types.Int(n)
	}
	f, err := strconv.ParseFloat(string(r), 64)
	if err != nil { // beyond a double's range
		return types.NewErr("number %s is out of range", r)
	}
	return types.Double(f)
}

// decodeString decodes a JSON string literal, quotes included. The common
// case, no escape and valid UTF-8, is one copy.
func decodeString(r []byte) string {
	if len(r) < 2 || r[len(r)-1] != '"' {
		return "" // not a string: only on a body that was not valid
	}
	in := r[1 : len(r)-1]
	if bytes.IndexByte(in, '\\') < 0 && utf8.Valid(in) {
		return string(in)
	}
	var s string
	_ = json.Unmarshal(r, &s) // valid: escapes, and invalid UTF-8 as U+FFFD
	return s
}

// members splits an object into its members, undecoded; the last of
// duplicate names wins.
func members(obj []byte) map[string]any {
	m := make(map[string]any)
	i := jsonscan.SkipWS(obj, 1)
	for i < len(obj) && obj[i] == '"' {
		kEnd := jsonscan.StringEnd(obj, i)
		name := decodeString(obj[i:kEnd])
		i = jsonscan.SkipWS(obj, kEnd)
		if i >= len(obj) || obj[i] != ':' {
			break
		}
		i = jsonscan.SkipWS(obj, i+1)
		vEnd := jsonscan.ValueEnd(obj, i)
		m[name] = &node{raw: rawJSON(obj[i:vEnd])}
		i = jsonscan.SkipWS(obj, vEnd)
		if i >= len(obj) || obj[i] != ',' {
			break
		}
		i = jsonscan.SkipWS(obj, i+1)
	}
	return m
}

// elements splits an array into its elements, undecoded.
func elements(arr []byte) []any {
	var out []any
	i := jsonscan.SkipWS(arr, 1)
	for i < len(arr) && arr[i] != ']' {
		vEnd := jsonscan.ValueEnd(arr, i)
		if vEnd <= i {
			break
		}
		out = append(out, &node{raw: rawJSON(arr[i:vEnd])})
		i = jsonscan.SkipWS(arr, vEnd)
		if i >= len(arr) || arr[i] != ',' {
			break
		}
		i = jsonscan.SkipWS(arr, i+1)
	}
	return out
}
