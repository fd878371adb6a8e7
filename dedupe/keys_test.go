package dedupe

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// checkKey fails unless key is usable as a header value and a store key.
func checkKey(t testing.TB, key string) {
	t.Helper()
	if key == "" || len(key) > maxKeyLen {
		t.Fatalf("key %q: length %d not in 1..%d", key, len(key), maxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c > '~' {
			t.Fatalf("key %q: byte %#x at %d is not printable ASCII", key, c, i)
		}
	}
}

func sha256Sum(s string) [sha256.Size]byte { return sha256.Sum256([]byte(s)) }

func bodyHashKey(body string) string {
	sum := sha256Sum(body)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func mustKeyer(t testing.TB, sources ...string) *Keyer {
	t.Helper()
	k, err := NewKeyer(sources)
	if err != nil {
		t.Fatalf("NewKeyer(%q): %v", sources, err)
	}
	return k
}

func TestNewKeyerErrors(t *testing.T) {
	for _, tt := range []struct {
		name    string
		sources []string
		want    string // in the error, besides the bad source
	}{
		{"unknown", []string{"foo"}, `unknown key source "foo"`},
		{"case matters", []string{"Runware"}, `unknown key source "Runware"`},
		{"empty string", []string{""}, `unknown key source ""`},
		{"body with path", []string{"body.x"}, `unknown key source "body.x"`},
		{"unknown after good", []string{"runware", "cookie.x"}, `unknown key source "cookie.x"`},
		{"json without path", []string{"json"}, `key source "json": missing path`},
		{"json empty path", []string{"json."}, `key source "json.": missing path`},
		{"json empty element", []string{"json.a..b"}, `key source "json.a..b": empty element`},
		{"json leading dot", []string{"json..a"}, `key source "json..a": empty element`},
		{"json trailing dot", []string{"json.a."}, `key source "json.a.": empty element`},
		{"header without name", []string{"header"}, `key source "header": missing header name`},
		{"header empty name", []string{"header."}, `key source "header.": missing header name`},
		{"header with space", []string{"header.X Id"}, `key source "header.X Id": "X Id" is not a valid header field name`},
		{"header with colon", []string{"header.X:Id"}, `not a valid header field name`},
		{"query without name", []string{"query"}, `key source "query": missing parameter name`},
		{"query empty name", []string{"query."}, `key source "query.": missing parameter name`},
		{"duplicate", []string{"runware", "runware"}, `key source "runware" repeats "runware"`},
		{"duplicate header", []string{"header.x-id", "header.X-Id"}, `key source "header.X-Id" repeats "header.x-id"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewKeyer(tt.sources)
			if err == nil {
				t.Fatalf("NewKeyer(%q) = %v, want error", tt.sources, k)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if !strings.HasPrefix(tt.name, "duplicate") && !strings.Contains(err.Error(), validSources) {
				t.Errorf("error %q does not list the valid sources", err)
			}
		})
	}
}

// TestKeyNotJSONBySource checks that a body that is not JSON fails with
// ErrNotJSON exactly for the source lists that read the JSON body, and that
// ReadsJSON says so (the filters then skip checking the body again).
func TestKeyNotJSONBySource(t *testing.T) {
	for _, tt := range []struct {
		sources []string
		want    bool
	}{
		{nil, true},
		{[]string{}, true},
		{[]string{"runware"}, true},
		{[]string{"json.id"}, true},
		{[]string{"header.X-Id", "json.id"}, true},
		{[]string{"header.X-Id"}, false},
		{[]string{"query.id", "body"}, false},
		{[]string{"body"}, false},
	} {
		k := mustKeyer(t, tt.sources...)
		_, err := k.Key(nil, nil, []byte("not json"))
		if got := errors.Is(err, ErrNotJSON); got != tt.want {
			t.Errorf("Key(%q) of a body that is not JSON: %v; want ErrNotJSON %v", tt.sources, err, tt.want)
		}
		if got := k.ReadsJSON(); got != tt.want {
			t.Errorf("ReadsJSON(%q) = %v; want %v", tt.sources, got, tt.want)
		}
	}
}

func TestKeyNotJSON(t *testing.T) {
	for _, tt := range []struct {
		sources []string
		body    string
		wantErr bool
	}{
		{nil, "", true},
		{nil, "   ", true},
		{nil, "not json", true},
		{nil, `{"a":1`, true},
		{nil, `{"a":1}{"b":2}`, true},
		{[]string{"json.id"}, "", true},
		{[]string{"json.id"}, "id=1", true},
		{[]string{"header.X-Id", "runware"}, "<xml/>", true},
		{[]string{"body"}, "", false},
		{[]string{"body"}, "not json", false},
		{[]string{"header.X-Id"}, "not json", false},
		{[]string{"query.id"}, "", false},
		{nil, `null`, false},
	} {
		key, err := mustKeyer(t, tt.sources...).Key(nil, nil, []byte(tt.body))
		if tt.wantErr {
			if !errors.Is(err, ErrNotJSON) || key != "" {
				t.Errorf("Key(%q, %q) = %q, %v; want ErrNotJSON", tt.sources, tt.body, key, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Key(%q, %q): %v", tt.sources, tt.body, err)
			continue
		}
		checkKey(t, key)
	}
}

func TestKeySources(t *testing.T) {
	const img = `{"taskUUID":"t","imageUUID":"i"}`
	hdr := http.Header{}
	hdr.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
	hdr.Set("X-Spaced", "a b")
	hdr.Set("X-Pipe", "a|b")
	hdr.Set("X|Pipe%", "v")
	hdr.Set("X-Long", strings.Repeat("z", 300))
	hdr["x-raw-lowercase"] = []string{"lower"} // not canonical, as from a hand-built Header
	hdr.Add("X-Multi", "first")
	hdr.Add("X-Multi", "second")
	q := url.Values{"id": {"42"}, "Id": {"upper"}, "a:b": {"colon"}, "e": {""}}
	h := `[0-9a-f]{32}`

	for _, tt := range []struct {
		name    string
		sources []string
		body    string
		want    string // a regexp for the whole key
	}{
		{"json string", []string{"json.id"}, `{"id":"evt_1"}`, `json\.id:evt_1`},
		{"json number", []string{"json.id"}, `{"id":12345}`, `json\.id:12345`},
		{"json number and string agree", []string{"json.id"}, `{"id":"12345"}`, `json\.id:12345`},
		{"json nested", []string{"json.data.object.id"}, `{"data":{"object":{"id":"evt_2"}}}`, `json\.data\.object\.id:evt_2`},
		{"json array index", []string{"json.items.1.id"}, `{"items":[{"id":"a"},{"id":"b"}]}`, `json\.items\.1\.id:b`},
		{"json index past end", []string{"json.items.2"}, `{"items":[1,2]}`, regexp.QuoteMeta(bodyHashKey(`{"items":[1,2]}`))},
		{"json index on object is a name", []string{"json.m.0"}, `{"m":{"0":"zero"}}`, `json\.m\.0:zero`},
		{"json non-canonical index", []string{"json.a.01"}, `{"a":["x","y"]}`, regexp.QuoteMeta(bodyHashKey(`{"a":["x","y"]}`))},
		{"json object hashed", []string{"json.obj"}, `{"obj":{"b":1, "a":[2]}}`, `json\.obj:#` + h},
		{"json last member wins", []string{"json.id"}, `{"id":"a","id":"b"}`, `json\.id:b`},
		{"json escaped name", []string{"json.id"}, `{"\u0069d":"x"}`, `json\.id:x`},
		{"json escapes kept", []string{"json.id"}, `{"id":"a\u0041"}`, `json\.id:a\\u0041`},
		{"json separators escaped", []string{"json.id"}, `{"id":"a|b#c%d"}`, `json\.id:a%7Cb%23c%25d`},
		{"json tag escaped", []string{"json.a:b|c"}, `{"a:b|c":"v"}`, `json\.a%3Ab%7Cc:v`},
		{"json through scalar", []string{"json.a.b"}, `{"a":"str"}`, regexp.QuoteMeta(bodyHashKey(`{"a":"str"}`))},
		{"json null", []string{"json.id"}, `{"id":null}`, regexp.QuoteMeta(bodyHashKey(`{"id":null}`))},
		{"json bool", []string{"json.ok"}, `{"ok":true}`, regexp.QuoteMeta(bodyHashKey(`{"ok":true}`))},
		{"json empty string", []string{"json.id"}, `{"id":""}`, regexp.QuoteMeta(bodyHashKey(`{"id":""}`))},
		{"json missing", []string{"json.id"}, `{"other":"x"}`, regexp.QuoteMeta(bodyHashKey(`{"other":"x"}`))},
		{"json long value", []string{"json.id"}, `{"id":"` + strings.Repeat("v", 250) + `"}`, `sha256:[0-9a-f]{64}`},
		{"json non-ASCII", []string{"json.id"}, `{"id":"café"}`, `sha256:[0-9a-f]{64}`},

		{"header canonicalized", []string{"header.x-github-delivery"}, ``, `header\.X-Github-Delivery:72d3162e-cc78-11e3-81ab-4c9367dc0958`},
		{"header as written", []string{"header.X-GitHub-Delivery"}, ``, `header\.X-Github-Delivery:72d3162e-cc78-11e3-81ab-4c9367dc0958`},
		{"header first value", []string{"header.X-Multi"}, ``, `header\.X-Multi:first`},
		{"header missing", []string{"header.X-Missing"}, `b`, regexp.QuoteMeta(bodyHashKey(`b`))},
		{"header non-canonical map key", []string{"header.x-raw-lowercase"}, `b`, regexp.QuoteMeta(bodyHashKey(`b`))},
		{"header pipe escaped", []string{"header.X-Pipe"}, ``, `header\.X-Pipe:a%7Cb`},
		{"header name escaped", []string{"header.X|Pipe%"}, ``, `header\.X%7Cpipe%25:v`},
		{"header space hashed", []string{"header.X-Spaced"}, ``, `sha256:[0-9a-f]{64}`},
		{"header long hashed", []string{"header.X-Long"}, ``, `sha256:[0-9a-f]{64}`},

		{"query", []string{"query.id"}, ``, `query\.id:42`},
		{"query case-sensitive", []string{"query.Id"}, ``, `query\.Id:upper`},
		{"query tag escaped", []string{"query.a:b"}, ``, `query\.a%3Ab:colon`},
		{"query empty value", []string{"query.e"}, `b`, regexp.QuoteMeta(bodyHashKey(`b`))},
		{"query missing", []string{"query.nope"}, ``, regexp.QuoteMeta(bodyHashKey(``))},

		{"body", []string{"body"}, `anything`, regexp.QuoteMeta(bodyHashKey(`anything`))},
		{"body empty", []string{"body"}, ``, regexp.QuoteMeta(bodyHashKey(``))},

		{"runware and header", []string{"runware", "header.X-GitHub-Delivery"}, img, `rw:t/i\|header\.X-Github-Delivery:72d3162e-cc78-11e3-81ab-4c9367dc0958`},
		{"header and runware in order", []string{"header.X-GitHub-Delivery", "runware"}, img, `header\.X-Github-Delivery:72d3162e-cc78-11e3-81ab-4c9367dc0958\|rw:t/i`},
		{"missing source contributes nothing", []string{"header.X-Missing", "runware", "query.nope"}, img, `rw:t/i`},
		{"runware yields nothing", []string{"runware", "query.id"}, `{"data":[]}`, `query\.id:42`},
		{"json and query", []string{"json.id", "query.id"}, `{"id":"e"}`, `json\.id:e\|query\.id:42`},
		{"two json sources", []string{"json.a", "json.b"}, `{"a":"x","b":"y"}`, `json\.a:x\|json\.b:y`},
		{"runware and body", []string{"runware", "body"}, img, `rw:t/i\|sha256:` + hex.EncodeToString(func() []byte { s := sha256Sum(img); return s[:] }())},
		{"nothing yields", []string{"json.id", "header.X-Missing", "query.nope"}, `{"data":[]}`, regexp.QuoteMeta(bodyHashKey(`{"data":[]}`))},
		{"combined too long", []string{"runware", "header.X-GitHub-Delivery", "body"}, `{"taskUUID":"06899537-567b-4be1-90fa-6006f113c2bc","imageUUID":"4a62a13d-9773-4d97-b9ae-879bd3cf804d"}`, `sha256:[0-9a-f]{64}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mustKeyer(t, tt.sources...).Key(hdr, q, []byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			checkKey(t, got)
			if !regexp.MustCompile(`^` + tt.want + `$`).MatchString(got) {
				t.Errorf("key = %q, want %q", got, tt.want)
			}
		})
	}
}

// Parts of different sources never read the same.
func TestKeySourcesDistinct(t *testing.T) {
	type req struct {
		sources []string
		h       http.Header
		q       url.Values
		body    string
	}
	for _, tt := range []struct {
		name string
		a, b req
	}{
		{"json paths", req{sources: []string{"json.a", "json.b"}, body: `{"a":"x"}`}, req{sources: []string{"json.a", "json.b"}, body: `{"b":"x"}`}},
		{"header vs query", req{sources: []string{"header.Id"}, h: http.Header{"Id": {"x"}}}, req{sources: []string{"query.Id"}, q: url.Values{"Id": {"x"}}}},
		{"header vs json", req{sources: []string{"header.Id"}, h: http.Header{"Id": {"x"}}}, req{sources: []string{"json.Id"}, body: `{"Id":"x"}`}},
		{"value holding a separator", req{sources: []string{"json.a", "json.b"}, body: `{"a":"x|json.b:y"}`}, req{sources: []string{"json.a", "json.b"}, body: `{"a":"x","b":"y"}`}},
		{"string vs object", req{sources: []string{"json.a"}, body: `{"a":"#00000000000000000000000000000000"}`}, req{sources: []string{"json.a"}, body: `{"a":{}}`}},
	} {
		ka, err := mustKeyer(t, tt.a.sources...).Key(tt.a.h, tt.a.q, []byte(tt.a.body))
		if err != nil {
			t.Fatal(err)
		}
		kb, err := mustKeyer(t, tt.b.sources...).Key(tt.b.h, tt.b.q, []byte(tt.b.body))
		if err != nil {
			t.Fatal(err)
		}
		if ka == kb {
			t.Errorf("%s: both keyed %q", tt.name, ka)
		}
	}
}

// Hostile bodies neither panic nor blow the stack, and a big body is not
// copied.
func TestKeyNasty(t *testing.T) {
	rw := mustKeyer(t)
	js := mustKeyer(t, "json.a.b.c")
	deep := func(n int) []byte {
		return append(bytes.Repeat([]byte("["), n), bytes.Repeat([]byte("]"), n)...)
	}
	for _, tt := range []struct {
		name    string
		body    []byte
		wantErr bool
	}{
		{"10 MB of [", bytes.Repeat([]byte("["), 10<<20), true},
		{"10 MB of {\"a\":", bytes.Repeat([]byte(`{"a":`), 2<<20), true},
		{"too deep but balanced", deep(20000), true},
		{"deep within the limit", deep(9000), false},
		{"deep objects within the limit", []byte(strings.Repeat(`{"a":`, 9000) + "1" + strings.Repeat("}", 9000)), false},
		{"invalid UTF-8 everywhere", []byte("{\"\xff\":\"\xfe\",\"taskUUID\":\"\xc3\x28\",\"imageUUID\":\"\xed\xa0\x80\"}"), false},
		{"lone surrogate escape", []byte(`{"taskUUID":"\ud800","imageUUID":"\udfff"}`), false},
		{"huge string", []byte(`{"taskUUID":"` + strings.Repeat("a", 1<<20) + `"}`), false},
		{"huge escaped string", []byte(`{"text":"` + strings.Repeat(`\"\\`, 1<<18) + `"}`), false},
		{"many tiny items", []byte(`{"data":[` + strings.Repeat(`0,`, 1<<18) + `0]}`), false},
		{"backslash runs", []byte(`{"a":"` + strings.Repeat(`\\`, 5000) + `","b":{"c":"` + strings.Repeat(`\\\"`, 5000) + `"}}`), false},
		{"NUL", []byte("\x00"), true},
		{"BOM", []byte("\xef\xbb\xbf{}"), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []*Keyer{rw, js} {
				key, err := k.Key(nil, nil, tt.body)
				if tt.wantErr {
					if !errors.Is(err, ErrNotJSON) {
						t.Fatalf("err = %v, want ErrNotJSON", err)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				checkKey(t, key)
			}
		})
	}
}

// A Keyer is shared by all requests of a relay.
func TestKeyerConcurrent(t *testing.T) {
	k := mustKeyer(t, "runware", "header.X-Id", "json.taskUUID")
	body := fixture(t, "05-photomaker-two-in-one.json")
	want, err := k.Key(http.Header{"X-Id": {"1"}}, nil, body)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if got, err := k.Key(http.Header{"X-Id": {"1"}}, nil, body); got != want || err != nil {
					t.Errorf("Key = %q, %v; want %q", got, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

// The documented memory claim: keying a 10 MiB body allocates a small
// fraction of it.
func TestKeyBigBodyNotCopied(t *testing.T) {
	body := bigRunwareBody(10<<20, true)
	k := mustKeyer(t)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	key, err := k.Key(nil, nil, body)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if want := "rw:" + bigTaskUUID + "/" + bigImageUUID; key != want {
		t.Errorf("key = %q, want %q", key, want)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("keying a %d-byte body allocated %d bytes", len(body), n)
	}
}
