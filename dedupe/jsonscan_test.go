package dedupe

import (
	"strings"
	"testing"
)

func TestLookupJSON(t *testing.T) {
	path := func(p string) []pathElem {
		var out []pathElem
		for _, e := range strings.Split(p, ".") {
			out = append(out, pathElem{name: e, index: arrayIndex(e)})
		}
		return out
	}
	for _, tt := range []struct {
		doc, path, want string // want "" for nil
	}{
		{`{"a":{"b":"x"}}`, "a.b", `"x"`},
		{` { "a" : { "b" : 12 } } `, "a.b", `12`},
		{`{"a":[{"id":1},{"id":2}]}`, "a.1.id", `2`},
		{`[10,20,30]`, "2", `30`},
		{`[10,20,30]`, "3", ""},
		{`{"a":[1]}`, "a.01", ""},   // not a canonical index
		{`{"a":1,"a":2}`, "a", `2`}, // the last duplicate wins
		{`{"\u0061":"esc"}`, "a", `"esc"`},
		{`{"a\"b":"q","a":"plain"}`, "a", `"plain"`},
		{`{"a":"x \"}\" y"}`, "a", `"x \"}\" y"`},
		{`{"a":{"b":[1,{"c":true}]}}`, "a.b", `[1,{"c":true}]`},
		{`{"a":null}`, "a", ""},
		{`{"a":false}`, "a", ""},
		{`{"a":""}`, "a", ""},
		{`{"a":1}`, "b", ""},
		{`{"a":1}`, "a.b", ""},
		{`"scalar"`, "a", ""},
	} {
		got := lookupJSON([]byte(tt.doc), path(tt.path))
		if string(got) != tt.want || (got == nil) != (tt.want == "") {
			t.Errorf("lookupJSON(%s, %s) = %q, want %q", tt.doc, tt.path, got, tt.want)
		}
	}
}
