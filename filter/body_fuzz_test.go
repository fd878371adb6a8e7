package filter

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
)

// toGo turns a CEL value read through the lazy body back into what
// encoding/json makes of the same JSON (numbers as float64).
func toGo(v ref.Val) any {
	switch t := v.(type) {
	case traits.Mapper:
		m := map[string]any{}
		for it := t.Iterator(); it.HasNext() == types.True; {
			k := it.Next()
			m[string(k.(types.String))] = toGo(t.Get(k))
		}
		return m
	case traits.Lister:
		l := []any{}
		for it := t.Iterator(); it.HasNext() == types.True; {
			l = append(l, toGo(it.Next()))
		}
		return l
	case types.Int:
		return float64(t)
	case types.Double:
		return float64(t)
	case types.Null:
		return nil
	case *types.Err:
		return "error"
	}
	return v.Value()
}

// FuzzParseBody: the lazy body reads as encoding/json decodes it, and is
// nil exactly when encoding/json refuses the body.
func FuzzParseBody(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.json")
	for _, name := range files {
		b, _ := os.ReadFile(name)
		f.Add(b)
	}
	for _, s := range []string{`{"a":"\"","b":"\\","c":"\\\"","d":[{"e":"]}"}]}`, `{"a":1,"a":{"b":2}}`,
		`[ 1 , -2.5e3 , "x\u0000y" , true , false , null ]`, `{"\u0061":"\ud800"}`, "\"\xff\"", `{"":0}`, ` {} `, `1e400`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := ParseBody(body)
		if json.Valid(body) == (got == nil) {
			t.Fatalf("json.Valid: %v; ParseBody: %v", json.Valid(body), got)
		}
		// Never panics on whatever body it is handed unchecked.
		if v, ok := ParseValidBody(body[:len(body)/2]).(ref.Val); ok {
			_ = toGo(v)
		}
		if got == nil {
			return
		}
		g := toGo(got.(ref.Val))
		var want any
		if err := json.Unmarshal(body, &want); err != nil {
			return // a number beyond a double's range: an error value here
		}
		if !reflect.DeepEqual(normalize(g), normalize(want)) {
			t.Fatalf("ParseBody(%q) = %#v, encoding/json %#v", body, g, want)
		}
	})
}

// normalize makes float64 precision differences of large integers equal:
// the lazy body keeps an int64 exactly where encoding/json rounds.
func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = normalize(e)
		}
	case []any:
		for i, e := range t {
			t[i] = normalize(e)
		}
	case float64:
		return float32(t)
	}
	return v
}
