package dedupe

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// ErrNotJSON is returned by Keyer.Key when a key source reads the JSON body
// and the body is not valid JSON (an empty body included).
var ErrNotJSON = errors.New("request body is not valid JSON")

// maxKeyLen bounds a readable key. Keys travel as the Idempotency-Key
// header and become Redis and bbolt keys, so longer material is hashed.
const maxKeyLen = 200

// flushLen is how much key material is buffered before it is streamed into
// a hash instead: a body with very many tiny items must not make the key
// material outgrow the body.
const flushLen = 4096

const validSources = `"runware", "json.<dot.path>", "header.<Name>", "query.<name>", "body"`

// hashPrefix starts every hashed key: the body source's and the one used
// when the readable form is too long or not printable.
const hashPrefix = "sha256:"

type sourceKind uint8

const (
	srcRunware sourceKind = iota
	srcJSON
	srcHeader
	srcQuery
	srcBody
)

// source is one compiled key source.
type source struct {
	kind sourceKind
	// tag starts the source's part of the key, already escaped: "rw",
	// "json.data.id", "header.X-Github-Delivery", "query.id" or "sha256".
	tag string
	// name is the canonical header name or the query parameter name.
	name string
	// path is the dot path of a json source.
	path []pathElem
}

// pathElem is one element of a json.<dot.path>: an object member name,
// which also addresses an array element when it is a plain index.
type pathElem struct {
	name  string
	index int // -1 when name is not an array index
}

// Keyer computes a dedupe key from a request according to configured
// sources. A Keyer is immutable and safe for concurrent use.
//
// A key is printable ASCII without spaces, at most 200 bytes. Each source
// that yields a value adds a part "<tag>:<value>" (parts joined by "|"),
// where the tag names the source, so that sources cannot collide:
//
//	rw:<taskUUID>/<outputID>[,<next item>...]
//	json.<dot.path>:<value>
//	header.<Canonical-Name>:<value>
//	query.<name>:<value>
//	sha256:<hex of the body>
//
// Separator bytes inside values are %-escaped so distinct material never
// reads the same. When the result would be longer than 200 bytes or hold a
// byte outside printable ASCII, the key is "sha256:" plus the hex SHA-256 of
// that material instead. When no source yields a value, the key is the body
// hash: a well-formed payload is never rejected for lacking a key.
//
// Values are taken from the JSON text as written: escapes in strings are
// not decoded, so the key of a byte-identical retry is always the same.
type Keyer struct {
	sources []source
	// needsJSON is set when a source reads the JSON body (runware or
	// json.*): Key then rejects a body that is not JSON.
	needsJSON  bool
	needsQuery bool
}

// NewKeyer validates and compiles the key sources, in order:
// "runware", "json.<dot.path>", "header.<Name>", "query.<name>", "body".
// An empty list means []string{"runware"}.
func NewKeyer(sources []string) (*Keyer, error) {
	if len(sources) == 0 {
		sources = []string{"runware"}
	}
	k := &Keyer{sources: make([]source, 0, len(sources))}
	seen := make(map[string]string, len(sources))
	for _, s := range sources {
		src, err := parseSource(s)
		if err != nil {
			return nil, err
		}
		if prev, ok := seen[src.tag]; ok {
			return nil, fmt.Errorf("key source %q repeats %q", s, prev)
		}
		seen[src.tag] = s
		if src.kind == srcRunware || src.kind == srcJSON {
			k.needsJSON = true
		}
		if src.kind == srcQuery {
			k.needsQuery = true
		}
		k.sources = append(k.sources, src)
	}
	return k, nil
}

func parseSource(s string) (source, error) {
	switch s {
	case "runware":
		return source{kind: srcRunware, tag: "rw"}, nil
	case "body":
		return source{kind: srcBody, tag: "sha256"}, nil
	}
	kind, rest, _ := strings.Cut(s, ".")
	switch kind {
	case "json":
		if rest == "" {
			return source{}, fmt.Errorf("key source %q: missing path after \"json.\"; valid sources are %s", s, validSources)
		}
		elems := strings.Split(rest, ".")
		path := make([]pathElem, len(elems))
		for i, e := range elems {
			if e == "" {
				return source{}, fmt.Errorf("key source %q: empty element in path %q; valid sources are %s", s, rest, validSources)
			}
			path[i] = pathElem{name: e, index: arrayIndex(e)}
		}
		return source{kind: srcJSON, tag: escapeTag("json." + rest), path: path}, nil
	case "header":
		if rest == "" {
			return source{}, fmt.Errorf("key source %q: missing header name after \"header.\"; valid sources are %s", s, validSources)
		}
		if !httpguts.ValidHeaderFieldName(rest) {
			return source{}, fmt.Errorf("key source %q: %q is not a valid header field name; valid sources are %s", s, rest, validSources)
		}
		name := textproto.CanonicalMIMEHeaderKey(rest)
		return source{kind: srcHeader, tag: escapeTag("header." + name), name: name}, nil
	case "query":
		if rest == "" {
			return source{}, fmt.Errorf("key source %q: missing parameter name after \"query.\"; valid sources are %s", s, validSources)
		}
		return source{kind: srcQuery, tag: escapeTag("query." + rest), name: rest}, nil
	}
	return source{}, fmt.Errorf("unknown key source %q; valid sources are %s", s, validSources)
}

// arrayIndex returns the array index that a path element names, or -1.
// Only canonical indexes count ("0", "12"; not "01"), capped well below
// overflow.
func arrayIndex(s string) int {
	if len(s) == 0 || len(s) > 9 || (len(s) > 1 && s[0] == '0') {
		return -1
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return -1
		}
		n = n*10 + int(s[i]-'0')
	}
	return n
}

// ReadsJSON reports whether a key source reads the JSON body (runware or
// json.*): Key then accepts only a body that is valid JSON, so a caller
// need not check that again.
func (k *Keyer) ReadsJSON() bool { return k.needsJSON }

// NeedsQuery reports whether a key source reads the query string, so the
// caller can skip parsing it otherwise.
func (k *Keyer) NeedsQuery() bool { return k.needsQuery }

// Key returns the dedupe key of a request. header and query sources read
// the first value of their field in h and query; an empty value yields
// nothing. body is the raw request body. The only error is ErrNotJSON, when
// a source reads the JSON body (runware or json.*) and body is not valid
// JSON.
func (k *Keyer) Key(h http.Header, query url.Values, body []byte) (string, error) {
	// json.Valid is iterative and caps nesting depth, so everything after
	// it may assume well-formed, bounded JSON.
	if k.needsJSON && !json.Valid(body) {
		return "", ErrNotJSON
	}
	// One buffer sized for any readable key; longer material is hashed.
	kb := keyBuf{b: make([]byte, 0, maxKeyLen+56)}
	for i := range k.sources {
		src := &k.sources[i]
		switch src.kind {
		case srcRunware:
			appendRunware(&kb, src.tag, body)
		case srcJSON:
			if v := lookupJSON(body, src.path); v != nil {
				kb.part(src.tag)
				kb.jsonValue(v)
			}
		case srcHeader:
			if v := h.Get(src.name); v != "" {
				kb.part(src.tag)
				appendEscaped(&kb, v, &escPlain)
			}
		case srcQuery:
			if v := query.Get(src.name); v != "" {
				kb.part(src.tag)
				appendEscaped(&kb, v, &escPlain)
			}
		case srcBody:
			sum := sha256.Sum256(body)
			kb.part(src.tag)
			kb.b = hex.AppendEncode(kb.b, sum[:])
		}
	}
	if kb.parts == 0 {
		return hashKey(sha256.Sum256(body)), nil
	}
	return kb.key(), nil
}

// hashKey formats a SHA-256 sum as a key.
func hashKey(sum [sha256.Size]byte) string {
	var out [len(hashPrefix) + 2*sha256.Size]byte
	copy(out[:], hashPrefix)
	hex.Encode(out[len(hashPrefix):], sum[:])
	return string(out[:])
}

// keyBuf accumulates the key material of one request.
type keyBuf struct {
	b     []byte
	parts int
	// long is set when a value was too long to be shown, so the key must
	// be hashed even though b itself may be short.
	long bool
	// h receives material beyond flushLen; nil until then.
	h hash.Hash
	// ih hashes whole JSON values (item hashes); reused across items.
	ih hash.Hash
}

// part starts the part of one source.
func (kb *keyBuf) part(tag string) {
	if kb.parts > 0 {
		kb.b = append(kb.b, '|')
	}
	kb.parts++
	kb.b = append(kb.b, tag...)
	kb.b = append(kb.b, ':')
}

// flush streams buffered material into kb.h once it grows large.
func (kb *keyBuf) flush() {
	if len(kb.b) < flushLen {
		return
	}
	if kb.h == nil {
		kb.h = sha256.New()
	}
	kb.h.Write(kb.b)
	kb.b = kb.b[:0]
}

// key returns the readable material when it is short and printable, else
// its hash.
func (kb *keyBuf) key() string {
	if kb.h == nil && !kb.long && len(kb.b) <= maxKeyLen && printable(kb.b) {
		return string(kb.b)
	}
	var sum [sha256.Size]byte
	if kb.h != nil {
		kb.h.Write(kb.b)
		kb.h.Sum(sum[:0])
	} else {
		sum = sha256.Sum256(kb.b)
	}
	return hashKey(sum)
}

// printable reports whether b is all printable ASCII but space: a key may
// end up as a header value, where surrounding spaces would be trimmed.
func printable(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// jsonValue appends the value of a json source: the text of a string (as
// written) or number, or a hash of an object or array.
func (kb *keyBuf) jsonValue(v []byte) {
	switch v[0] {
	case '"':
		appendEscaped(kb, v[1:len(v)-1], &escPlain)
	case '{', '[':
		kb.valueHash(v)
	default:
		appendEscaped(kb, v, &escPlain)
	}
}

// valueHash appends "#" and a hash of the JSON value v with insignificant
// whitespace removed, so re-indenting a value keeps its key. 128 bits are
// plenty to tell payloads apart and keep more keys readable.
func (kb *keyBuf) valueHash(v []byte) {
	if kb.ih == nil {
		kb.ih = sha256.New()
	} else {
		kb.ih.Reset()
	}
	writeCompact(kb.ih, v)
	var sum [sha256.Size]byte
	kb.ih.Sum(sum[:0])
	kb.b = append(kb.b, '#')
	kb.b = hex.AppendEncode(kb.b, sum[:16])
	kb.flush()
}

// Escape sets: bytes that would be read as structure in a key. Escaping
// them (and '%') keeps distinct material distinct. Bytes outside printable
// ASCII are left alone: they force a hashed key anyway.
var (
	escPlain = escapeSet("%|#")
	escRW    = escapeSet("%|#,/+!")
	escTags  = escapeSet("%|:")
)

func escapeSet(chars string) (set [256]bool) {
	for i := 0; i < len(chars); i++ {
		set[chars[i]] = true
	}
	return set
}

// escapeTag escapes a source's tag. Unlike values, a tag is escaped in
// full however long it is: a long tag simply makes every key hashed.
func escapeTag(tag string) string {
	var b []byte
	for i := 0; i < len(tag); i++ {
		if c := tag[i]; escTags[c] {
			b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

const hexDigits = "0123456789ABCDEF"

// appendEscaped appends v with the bytes in esc %-escaped. A value too long
// for any readable key is replaced by "%%" and its hash; "%%" never
// results from escaping, so that cannot be mistaken for a value.
func appendEscaped[T string | []byte](kb *keyBuf, v T, esc *[256]bool) {
	if len(v) > maxKeyLen {
		sum := sum256(v)
		kb.long = true
		kb.b = append(kb.b, "%%"...)
		kb.b = hex.AppendEncode(kb.b, sum[:])
		kb.flush()
		return
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; esc[c] {
			kb.b = append(kb.b, '%', hexDigits[c>>4], hexDigits[c&15])
		} else {
			kb.b = append(kb.b, c)
		}
	}
	kb.flush()
}

// sum256 hashes a string or byte slice without copying a long string.
func sum256[T string | []byte](v T) [sha256.Size]byte {
	switch v := any(v).(type) {
	case []byte:
		return sha256.Sum256(v)
	case string:
		h := sha256.New()
		var chunk [512]byte
		for len(v) > 0 {
			n := copy(chunk[:], v)
			h.Write(chunk[:n])
			v = v[n:]
		}
		var sum [sha256.Size]byte
		h.Sum(sum[:0])
		return sum
	}
	panic("unreachable")
}
