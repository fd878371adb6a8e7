// Package filter chooses, at admit, which destinations a payload goes to: a
// filter is a CEL expression over the payload, compiled once when the config
// loads and evaluated once per payload and destination.
//
// The variables:
//
//	body     dyn                  the body parsed as JSON (ParseBody); null when it is not JSON
//	headers  map(string, string)  the request's headers, first value of each;
//	                              looked up without regard to case: headers["x-github-event"]
//	                              and headers["X-GitHub-Event"] are the same header
//	query    map(string, string)  the URL's query parameters, first value of each (case matters)
//	key      string               the payload's dedupe key, empty when it has none
//
// A JSON number that is an integer within int64 is a CEL int, any other a
// double; CEL compares ints and doubles by value, so body.count == 1 and
// body.cost > 0.001 both mean what they say. The functions are CEL's
// standard ones (size, contains, startsWith, endsWith, matches, has, the
// macros all, exists, exists_one, filter, map, ...); the strings extension
// is left out, as its split and replace could allocate without bound.
//
// Examples:
//
//	body.taskType == "imageInference"
//	has(body.imageURL) || has(body.imageBase64Data)
//	headers["X-GitHub-Event"] == "push" && key.startsWith("gh-")
//	has(body.data) && body.data.exists(d, d.taskType == "imageInference")
package filter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
)

// Timeout bounds one evaluation of a filter that loops (all, exists,
// exists_one, filter, map): past it the evaluation stops with an error (no
// match), so a loop over a large list in a 32 MiB body, or a loop nested in
// one, cannot hold a request's goroutine and a core. The loop is checked
// every InterruptEvery steps. A filter without a loop needs no bound: each
// of its steps (a field, an index, a comparison, a string function) reads
// the body at most once, so its work grows with the body's size and nothing
// more (the costliest, matches over a 6 MiB string, takes about 90 ms).
//
// CEL's own cost limit (cel.CostLimit) is not used: its cost tracker, in
// cel-go v0.32.0, takes time that grows with the square of a loop's length
// (a loop over 100,000 items took 22 s with it, milliseconds without).
const (
	Timeout        = 100 * time.Millisecond
	InterruptEvery = 100
)

// Filter is a compiled filter; it is safe for concurrent use.
type Filter struct {
	expr  string
	prg   cel.Program
	body  bool // the expression reads body
	query bool // the expression reads query
	loops bool // the expression holds a comprehension: evaluate under Timeout
}

var env = func() *cel.Env {
	e, err := cel.NewEnv(
		cel.Variable("body", cel.DynType),
		cel.Variable("headers", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("query", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("key", cel.StringType),
	)
	if err != nil {
		panic(err)
	}
	return e
}()

// Compile compiles expr. Its error carries CEL's message, which points at
// the problem in the expression. An expression that cannot yield a bool
// ("abc", body.n + 1 where n is known to be an int) is refused with "must
// yield a bool". An expression the checker types dyn (body.flag) compiles:
// if it yields something other than a bool on a payload, that evaluation is
// an error.
func Compile(expr string) (*Filter, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, errors.New("filter is empty")
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("filter %q does not compile: %v", expr, iss.Err())
	}
	out := ast.OutputType()
	if !out.IsExactType(cel.BoolType) && !out.IsExactType(cel.DynType) {
		return nil, fmt.Errorf("filter %q must yield a bool, not %s", expr, out)
	}
	prg, err := env.Program(ast, cel.InterruptCheckFrequency(InterruptEvery))
	if err != nil {
		return nil, fmt.Errorf("filter %q: %v", expr, err)
	}
	f := &Filter{expr: expr, prg: prg}
	celast.PreOrderVisit(ast.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		if e.Kind() == celast.ComprehensionKind {
			f.loops = true
		}
	}))
	for _, r := range ast.NativeRep().ReferenceMap() {
		switch r.Name {
		case "body":
			f.body = true
		case "query":
			f.query = true
		}
	}
	return f, nil
}

// String returns the expression as written.
func (f *Filter) String() string { return f.expr }

// UsesBody reports whether the expression reads body: when no filter of a
// relay does, the caller need not parse the body at all.
func (f *Filter) UsesBody() bool { return f.body }

// UsesQuery reports whether the expression reads query, which then has to
// be parsed for it.
func (f *Filter) UsesQuery() bool { return f.query }

// Input is what a filter sees of one payload.
type Input struct {
	// Body is the parsed body, as ParseBody returns it (or as
	// encoding/json decodes into an any); nil when the body is not JSON.
	Body any
	// Headers are the request's headers (canonical names, as net/http
	// gives them).
	Headers http.Header
	// Query is the request's query.
	Query url.Values
	// Key is the payload's dedupe key, "" when it has none.
	Key string
}

// Match evaluates the filter on in. An error (a missing field, a type
// mismatch, a result that is not a bool, Timeout) comes with false: the
// payload does not match, and the caller counts the error. The error names
// the filter's expression and CEL's reason, such as "no such key: imageURL"
// or "no such overload".
func (f *Filter) Match(in Input) (bool, error) {
	act := &activation{in: &in}
	var out ref.Val
	var err error
	if f.loops {
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		out, _, err = f.prg.ContextEval(ctx, act)
		cancel()
	} else {
		out, _, err = f.prg.Eval(act)
	}
	if err != nil {
		return false, fmt.Errorf("filter %q: %v", f.expr, err)
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("filter %q yielded a %s, not a bool", f.expr, out.Type())
	}
	return bool(b), nil
}

// activation resolves the four variables; headers and query are converted
// only when the expression reads them.
type activation struct{ in *Input }

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "body":
		if a.in.Body == nil {
			return types.NullValue, true
		}
		return a.in.Body, true
	case "headers":
		return foldMap{types.NewStringStringMap(types.DefaultTypeAdapter, firstValues(a.in.Headers, true))}, true
	case "query":
		return types.NewStringStringMap(types.DefaultTypeAdapter, firstValues(a.in.Query, false)), true
	case "key":
		return a.in.Key, true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

// firstValues keeps the first value of each name; with canonical, names are
// put in canonical header form.
func firstValues(m map[string][]string, canonical bool) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if len(v) == 0 {
			continue
		}
		if canonical {
			k = textproto.CanonicalMIMEHeaderKey(k)
		}
		if _, seen := out[k]; !seen || !canonical {
			out[k] = v[0]
		}
	}
	return out
}

// foldMap is the headers map: a string key is put in canonical header form
// before it is looked up, so that a header's name matches whatever its case.
type foldMap struct{ traits.Mapper }

func fold(k ref.Val) ref.Val {
	if s, ok := k.(types.String); ok {
		return types.String(textproto.CanonicalMIMEHeaderKey(string(s)))
	}
	return k
}

func (m foldMap) Contains(k ref.Val) ref.Val     { return m.Mapper.Contains(fold(k)) }
func (m foldMap) Get(k ref.Val) ref.Val          { return m.Mapper.Get(fold(k)) }
func (m foldMap) Find(k ref.Val) (ref.Val, bool) { return m.Mapper.Find(fold(k)) }
