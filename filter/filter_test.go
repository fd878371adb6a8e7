package filter

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustCompile(t testing.TB, expr string) *Filter {
	t.Helper()
	f, err := Compile(expr)
	if err != nil {
		t.Fatalf("Compile(%q): %v", expr, err)
	}
	return f
}

// TestRunwareFilters runs the filters a Runware user writes over Runware's
// result bodies: the archive gets image results only.
func TestRunwareFilters(t *testing.T) {
	image := ParseBody(fixture(t, "01-image-bare.json"))
	wrapped := ParseBody(fixture(t, "02-image-wrapped.json"))
	audio := ParseBody(fixture(t, "07-audio.json"))
	failed := ParseBody(fixture(t, "13-error-provider-timeout.json"))
	b64 := ParseBody(fixture(t, "16-image-base64data.json"))
	hdr := http.Header{"X-Event": {"x", "y"}, "Content-Type": {"application/json"}}
	q := url.Values{"source": {"runware"}, "Mixed": {"Case"}}
	in := func(body any) Input { return Input{Body: body, Headers: hdr, Query: q, Key: "abc-123"} }

	cases := []struct {
		expr string
		in   Input
		want bool
	}{
		{`body.taskType == "imageInference"`, in(image), true},
		{`body.taskType == "imageInference"`, in(audio), false},
		{`body.taskType == "imageInference"`, in(b64), true},
		{`has(body.imageURL)`, in(image), true},
		{`has(body.imageURL)`, in(b64), false},
		{`has(body.imageURL)`, in(audio), false},
		{`has(body.errors)`, in(failed), true},
		{`has(body.errors) && body.errors[0].code == "timeoutProvider"`, in(failed), true},
		{`has(body.data) && body.data.exists(d, d.taskType == "imageInference")`, in(wrapped), true},
		{`has(body.data) && body.data.exists(d, d.taskType == "imageInference")`, in(image), false},
		{`body.cost > 0.001`, in(image), true},
		{`body.cost < 0.01`, in(audio), false},
		{`body.seed == 7532114250969985124`, in(image), true}, // every digit of a large integer
		{`body.NSFWContent == false`, in(image), true},
		{`headers["X-Event"] == "x"`, in(image), true}, // the first value
		{`headers["x-event"] == "x"`, in(image), true}, // whatever the case
		{`headers["X-EVENT"] == "x"`, in(image), true},
		{`"x-event" in headers`, in(image), true},
		{`"X-Missing" in headers`, in(image), false},
		{`headers["Content-Type"].startsWith("application/json")`, in(image), true},
		{`query["source"] == "runware"`, in(image), true},
		{`"mixed" in query`, in(image), false}, // query names keep their case
		{`key.startsWith("abc")`, in(image), true},
		{`key.startsWith("abd")`, in(image), false},
		{`body == null`, in(ParseBody([]byte("not json"))), true},
		{`body == null`, in(image), false},
		{`body == null || body.taskType == "imageInference"`, in(nil), true},
		{`body.flag`, in(map[string]any{"flag": true}), true}, // dyn that is a bool
	}
	for _, c := range cases {
		got, err := mustCompile(t, c.expr).Match(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.expr, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s = %v, want %v", c.expr, got, c.want)
		}
	}
}

// TestNumbers: a JSON number compares with an int or a double literal by
// value, as a user expects.
func TestNumbers(t *testing.T) {
	body := ParseBody([]byte(`{"count":1,"three":3,"half":0.5,"big":1e300,"huge":1e400,"neg":-2}`))
	for expr, want := range map[string]bool{
		`body.count == 1`:      true,
		`body.count == 1.0`:    true,
		`body.count > 2`:       false,
		`body.three > 2`:       true,
		`body.three > 2.5`:     true,
		`body.half == 0.5`:     true,
		`body.half < 1`:        true,
		`body.big > 1`:         true,
		`body.neg < 0`:         true,
		`body.count in [1, 2]`: true,
	} {
		got, err := mustCompile(t, expr).Match(Input{Body: body})
		if err != nil || got != want {
			t.Errorf("%s = %v, %v; want %v", expr, got, err, want)
		}
	}
}

func TestParseBody(t *testing.T) {
	for _, s := range []string{"", " ", "not json", `{"a":1} x`, `{"a":1}{}`, `{"a":`, "\xff", `{"a":"\x"}`} {
		if v := ParseBody([]byte(s)); v != nil {
			t.Errorf("ParseBody(%q) = %#v, want nil", s, v)
		}
	}
	body := ParseBody([]byte(" {\"a\":[1,2.5,\"s\",{\"b\":null}],\"c\":9223372036854775808,\"d\":1,\"d\":2," +
		`"e":"q\"uo\\te\u00e9\ud83d\ude00","f" : { "g" : [ ] , "h":{}},"i":"\\","j":true,"k":1e400}` + "\n"))
	for _, expr := range []string{
		`body.a[0] == 1 && type(body.a[0]) == int`,
		`body.a[1] == 2.5 && body.a[2] == "s" && body.a[3].b == null && size(body.a) == 4`,
		`type(body.c) == double && body.c > 9223372036854775000.0`, // beyond int64: a double
		`body.d == 2`, // the last of duplicates
		`body.e == "q\"uo\\teé😀"`,
		`size(body.f.g) == 0 && size(body.f.h) == 0 && body.i == "\\" && body.j`,
		`size(body) == 8 && "k" in body`,
	} {
		if ok, err := mustCompile(t, expr).Match(Input{Body: body}); !ok || err != nil {
			t.Errorf("%s: %v, %v", expr, ok, err)
		}
	}
	// A number beyond a double's range cannot be read: an error, no match.
	if ok, err := mustCompile(t, `body.k > 0`).Match(Input{Body: body}); ok || err == nil {
		t.Errorf("body.k > 0: %v, %v", ok, err)
	}
	// A body that is JSON but not an object.
	for s, expr := range map[string]string{`"str"`: `body == "str"`, `[1, {"a": 2}]`: `body[1].a == 2`, `null`: `body == null`, ` 12 `: `body == 12`} {
		if ok, err := mustCompile(t, expr).Match(Input{Body: ParseBody([]byte(s))}); !ok || err != nil {
			t.Errorf("%s on %s: %v, %v", expr, s, ok, err)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	cases := map[string]string{
		``:                     "empty",
		`body.taskType ==`:     "does not compile",
		`body.taskType = "x"`:  "does not compile",
		`nosuchvar == 1`:       "undeclared reference to 'nosuchvar'",
		`key.nosuchfunction()`: "does not compile",
		`"abc"`:                "must yield a bool",
		`key`:                  "must yield a bool",
		`size(key)`:            "must yield a bool",
		`headers["X-Event"]`:   "must yield a bool",
		`key == 1`:             "no matching overload",
		`headers["a"] + "b"`:   "must yield a bool",
	}
	for expr, want := range cases {
		_, err := Compile(expr)
		if err == nil {
			t.Errorf("Compile(%q) succeeded", expr)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Compile(%q) = %v, want it to say %q", expr, err, want)
		}
	}
}

// TestEvalErrors: what cannot be evaluated on a payload is an error and no
// match, never a panic.
func TestEvalErrors(t *testing.T) {
	image := ParseBody(fixture(t, "01-image-bare.json"))
	cases := map[string]Input{
		`body.imageBase64Data == "x"`:  {Body: image},                         // missing field
		`body.taskType > 3`:            {Body: image},                         // string > int
		`body.taskType`:                {Body: image},                         // not a bool
		`body.data[0].taskType == "x"`: {Body: image},                         // missing field
		`body.x == 1`:                  {Body: nil},                           // null has no fields
		`headers["X-Missing"] == "x"`:  {Headers: http.Header{"A": {"b"}}},    // missing key
		`query["q"] == "x"`:            {},                                    // no query at all
		`body[0] == 1`:                 {Body: map[string]any{"a": int64(1)}}, // index into a map
	}
	for expr, in := range cases {
		got, err := mustCompile(t, expr).Match(in)
		if err == nil || got {
			t.Errorf("%s = %v, %v; want false and an error", expr, got, err)
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", expr)) {
			t.Errorf("%s: the error %q does not name the filter", expr, err)
		}
	}
}

// TestTimeout: a filter that would loop for long over a large body stops
// with an error instead.
func TestTimeout(t *testing.T) {
	items := make([]any, 200_000)
	for i := range items {
		items[i] = map[string]any{"n": int64(i)}
	}
	body := map[string]any{"items": items}
	for _, expr := range []string{
		// 4e10 steps: hours
		`body.items.all(a, body.items.all(b, a.n >= 0 && b.n >= 0))`,
		`body.items.map(a, body.items.filter(b, b.n == a.n)).size() > 0`,
		`body.items.exists(a, body.items.exists(b, a.n < 0))`,
	} {
		f := mustCompile(t, expr)
		start := time.Now()
		got, err := f.Match(Input{Body: body})
		took := time.Since(start)
		if err == nil || got || !strings.Contains(err.Error(), "deadline exceeded") {
			t.Errorf("%s = %v, %v; want the timeout's error", expr, got, err)
		}
		if took > 10*Timeout {
			t.Errorf("%s took %s before it was stopped", expr, took)
		}
		t.Logf("%s: stopped after %s", expr, took)
	}
	// A single loop over 2,000 items, and reading a 6 MiB string, are
	// well within bounds.
	for expr, in := range map[string]Input{
		`body.items.all(a, a.n >= 0)`: {Body: map[string]any{"items": items[:2_000]}},
		`body.img.startsWith("iVBOR") && !body.img.contains("*") && body.img.matches("^[A-Za-z0-9+/]+$")`: {
			Body: map[string]any{"img": "iVBOR" + strings.Repeat("A", 6<<20)}},
	} {
		start := time.Now()
		if ok, err := mustCompile(t, expr).Match(in); !ok || err != nil {
			t.Errorf("%s: %v, %v", expr, ok, err)
		}
		t.Logf("%s: %s", expr, time.Since(start))
	}
}

func TestUsesBody(t *testing.T) {
	for expr, want := range map[string]bool{
		`body.taskType == "x"`:             true,
		`body == null`:                     true,
		`headers["X-Event"] == "x"`:        false,
		`key.startsWith("a")`:              false,
		`query["a"] == "b" || has(body.x)`: true,
	} {
		if got := mustCompile(t, expr).UsesBody(); got != want {
			t.Errorf("UsesBody(%s) = %v, want %v", expr, got, want)
		}
	}
}

func TestUsesQuery(t *testing.T) {
	for expr, want := range map[string]bool{
		`query["a"] == "b" || has(body.x)`: true,
		`"a" in query`:                     true,
		`body.taskType == "x"`:             false,
		`headers["X-Query"] == "x"`:        false,
	} {
		if got := mustCompile(t, expr).UsesQuery(); got != want {
			t.Errorf("UsesQuery(%s) = %v, want %v", expr, got, want)
		}
	}
}

// TestConcurrent: one Filter matches from many goroutines (the handler's).
func TestConcurrent(t *testing.T) {
	f := mustCompile(t, `body.taskType == "imageInference" && headers["x-event"] == "x"`)
	raw := fixture(t, "01-image-bare.json")
	done := make(chan error)
	for range 8 {
		go func() {
			var err error
			for range 200 {
				// one filter for every request at once; a parse per request,
				// as the ack path makes it
				ok, e := f.Match(Input{Body: ParseBody(raw), Headers: http.Header{"X-Event": {"x"}}})
				if e != nil || !ok {
					err = e
				}
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}
