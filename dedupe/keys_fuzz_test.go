package dedupe

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzKeyers cover every source kind and a few combinations.
var fuzzKeyers = [][]string{
	{"runware"},
	{"json.a.b"},
	{"json.data.0.id"},
	{"header.X-Id"},
	{"query.id"},
	{"body"},
	{"runware", "header.X-Id", "query.id"},
	{"json.a", "json.b", "body"},
}

// FuzzKey checks, for any body, header value and query value, that Key
// never panics, fails only with ErrNotJSON on invalid JSON, and always
// returns a usable key; and, for the runware source, that whitespace and
// the {"data":[...]} wrapper never change a key while distinct ids always
// do. Its seed corpus (every testdata file plus hostile inputs) runs on
// every go test.
func FuzzKey(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "runware", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("fixtures: %v, %v", files, err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "72d3162e-cc78-11e3-81ab-4c9367dc0958", "42")
	}
	for _, s := range []string{
		"",
		" ",
		"null",
		"[]",
		"{}",
		`{"data":[]}`,
		`{"data":null,"errors":null,"error":null}`,
		`{"data":[1,"x",true,null,[],{}]}`,
		`{"a":{"b":"v"},"data":[{"id":"x"}]}`,
		`{"a":{"b":{"c":1}}}`,
		`{"taskUUID":"t","imageUUID":"i","imageUUID":"j"}`,
		`{"task\u0055UID":"t","imageUUID":"a\"b\\"}`,
		`{"taskUUID":"a|b/c,d+e!f#g%h","imageUUID":"%%00"}`,
		"{\"taskUUID\":\"\xff\xfe\",\"imageUUID\":\"\xc3\x28\"}",
		`{"taskUUID":"\ud800\udc00","code":"\u0000"}`,
		`{"taskUUID":1e400,"imageUUID":-0.0e-0}`,
		`{"outputs":{"files":[{"uuid":"a"},{"uuid":1},{"uuid":null},"x"]}}`,
		strings.Repeat("[", 20000),
		strings.Repeat("[", 9999) + strings.Repeat("]", 9999),
		strings.Repeat(`{"a":`, 5000) + `"x"` + strings.Repeat("}", 5000),
		`{"text":"` + strings.Repeat(`\\\"`, 3000) + `"}`,
		`{"taskUUID":"t","imageUUID":"` + strings.Repeat("x", 5000) + `"}`,
		`{"data":[` + strings.Repeat(`{"taskUUID":"t","text":"x"},`, 500) + `0]}`,
		`{"a":"`, `{"a":}`, `{"a" 1}`, `[1,,2]`, `"\`, "{\"a\":\"\\\"}", `}`, `]`, `,`, `:`,
	} {
		f.Add([]byte(s), "", "")
		f.Add([]byte(s), "a b|c", "\x00\xff")
	}

	f.Add([]byte(nil), "", "")

	keyers := make([]*Keyer, len(fuzzKeyers))
	for i, s := range fuzzKeyers {
		keyers[i] = mustKeyer(f, s...)
	}
	rw := keyers[0]

	f.Fuzz(func(t *testing.T, body []byte, hv, qv string) {
		h := http.Header{"X-Id": {hv}}
		q := url.Values{"id": {qv}}
		valid := json.Valid(body)

		for i, k := range keyers {
			key, err := k.Key(h, q, body)
			if err != nil {
				if !errors.Is(err, ErrNotJSON) || !k.needsJSON || valid {
					t.Fatalf("%q: Key: %v (needsJSON %v, valid %v)", fuzzKeyers[i], err, k.needsJSON, valid)
				}
				continue
			}
			if k.needsJSON && !valid {
				t.Fatalf("%q: invalid JSON keyed %q", fuzzKeyers[i], key)
			}
			checkKey(t, key)
			if again, _ := k.Key(h, q, body); again != key {
				t.Fatalf("%q: key %q then %q", fuzzKeyers[i], key, again)
			}
		}

		// Items that differ in taskUUID or output id never share a key,
		// whatever bytes the ids hold: moving the split point between
		// them must change the key.
		if len(qv) >= 2 {
			a, _ := json.Marshal(map[string]string{"taskUUID": hv, "imageUUID": qv})
			b, _ := json.Marshal(map[string]string{"taskUUID": hv + qv[:1], "imageUUID": qv[1:]})
			ka, _ := rw.Key(nil, nil, a)
			kb, _ := rw.Key(nil, nil, b)
			if ka == kb && !bytes.Equal(a, b) {
				t.Fatalf("%s and %s share key %q", a, b, ka)
			}
		}

		// The scanner stays in bounds even on input json.Valid rejects.
		var kb keyBuf
		appendRunware(&kb, "rw", body)
		lookupJSON(body, []pathElem{{"a", -1}, {"0", 0}})

		if !valid {
			return
		}
		key, _ := rw.Key(nil, nil, body)
		fellBack := key == bodyHashKey(string(body))

		// Insignificant whitespace never changes a runware key.
		var compact bytes.Buffer
		if err := json.Compact(&compact, body); err != nil {
			t.Fatal(err)
		}
		if ck, _ := rw.Key(nil, nil, compact.Bytes()); !fellBack && ck != key {
			t.Fatalf("compacted body keyed %q, body %q", ck, key)
		}

		// A bare item and the item wrapped in {"data":[...]} share a key.
		var top map[string]json.RawMessage
		if json.Unmarshal(body, &top) == nil && top != nil {
			_, task := top["taskUUID"]
			_, data := top["data"]
			_, errs := top["errors"]
			_, errOne := top["error"]
			if task || !(data || errs || errOne) {
				wrapped := append(append([]byte(`{"data":[`), body...), "]}"...)
				if json.Valid(wrapped) { // too deep otherwise
					if wk, _ := rw.Key(nil, nil, wrapped); wk != key {
						t.Fatalf("wrapped item keyed %q, bare %q", wk, key)
					}
				}
			}
		}

		checkJSONPath(t, keyers[1], body)
	})
}

// checkJSONPath compares the json.a.b source with encoding/json.
func checkJSONPath(t *testing.T, k *Keyer, body []byte) {
	key, err := k.Key(nil, nil, body)
	if err != nil {
		t.Fatal(err)
	}
	var v json.RawMessage = body
	for _, name := range []string{"a", "b"} {
		var m map[string]json.RawMessage
		if json.Unmarshal(v, &m) != nil {
			v = nil
			break
		}
		v = m[name]
	}
	v = bytes.TrimSpace(v)
	switch {
	case len(v) == 0, string(v) == "null", string(v) == "true", string(v) == "false", string(v) == `""`:
		if want := bodyHashKey(string(body)); key != want {
			t.Fatalf("json.a.b absent: key %q, want body hash %q", key, want)
		}
	case v[0] == '{' || v[0] == '[':
		if !strings.HasPrefix(key, "json.a.b:#") {
			t.Fatalf("json.a.b is %.40s: key %q, want a hash part", v, key)
		}
	default:
		text := string(bytes.Trim(v, `"`))
		plain := len(text) <= 100
		for i := 0; i < len(text); i++ {
			c := text[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.:+", c) >= 0) {
				plain = false
			}
		}
		if plain && key != "json.a.b:"+text {
			t.Fatalf("json.a.b is %s: key %q", v, key)
		}
	}
}
