package webhookrelay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestCheckQueryStripsAuthKeepingOrderAndEncoding(t *testing.T) {
	auth, err := compileAuth(caddy.NewReplacer(), map[string][]string{"token": {"s"}, "sig": {"1"}})
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{auth: auth}
	for in, want := range map[string]string{
		"token=s&sig=1":                    "",
		"a=1&token=s&b=%20x&sig=1":         "a=1&b=%20x",
		"tok%65n=s&a=1&si%67=1":            "a=1", // an encoded name is still the auth param
		"z=&token=s&sig=%31":               "z=",
		"a=1&&b=2&token=s&sig=1":           "a=1&b=2",
		"tokenx=1&xtoken=2&token=s&sig=1":  "tokenx=1&xtoken=2",
		"a=%2B+b&token=s&sig=1&c=%zz-like": "",
	} {
		got, err := h.checkQuery(in)
		if strings.Contains(in, "%zz") {
			if !errors.Is(err, errMalformedQuery) {
				t.Errorf("checkQuery(%q): want errMalformedQuery, got %v", in, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("checkQuery(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestCheckQueryAuth(t *testing.T) {
	repl := caddy.NewReplacer()
	t.Setenv("RELAY_TEST_NEW", "new-secret")
	auth, err := compileAuth(repl, map[string][]string{
		"token": {"{env.RELAY_TEST_NEW}", "old-secret"},
		"team":  {"a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{auth: auth}
	for query, want := range map[string]error{
		"token=new-secret&team=a":                    nil,
		"token=old-secret&team=a":                    nil,
		"tok%65n=old-secret&team=%61":                nil,
		"token=new-secret":                           errWrongAuth,
		"team=a":                                     errWrongAuth,
		"token=wrong&team=a":                         errWrongAuth,
		"token=new-secret&token=new-secret&team=a":   errWrongAuth,
		"token=new-secret&tok%65n=new-secret&team=a": errWrongAuth,
		"token=new-secret%00&team=a":                 errWrongAuth,
		"token=NEW-SECRET&team=a":                    errWrongAuth,
		"":                                           errWrongAuth,
		"token=new-secret&team=a;x=1":                errMalformedQuery,
		"token=new-secret&team=a&x=%":                errMalformedQuery,
		"token=new-secret&team=a&%zz=1":              errMalformedQuery,
	} {
		_, err := h.checkQuery(query)
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Errorf("checkQuery(%q) = %v, want %v", query, err, want)
		}
	}
}

// A later handler (Caddy's header directive) may edit header values in
// place, so no two responses may share one.
func TestResponsesShareNoHeaderValues(t *testing.T) {
	h := provisioned(t, "headers")
	first := serve(h, "/?token=s3cret", []byte(`{"taskUUID":"t1","imageUUID":"i1"}`))
	first.Header()["Content-Type"][0] = "changed by someone else"
	second := serve(h, "/?token=s3cret", []byte(`{"taskUUID":"t1","imageUUID":"i2"}`))
	if got := second.Header().Get("Content-Type"); got != "application/json" {
		t.Errorf("second response's Content-Type %q, want application/json", got)
	}
}

func TestCheckQueryParameterLimit(t *testing.T) {
	auth, err := compileAuth(caddy.NewReplacer(), map[string][]string{"token": {"s"}})
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{auth: auth}
	for _, n := range []int{maxQueryParams - 1, maxQueryParams} {
		q := strings.Repeat("a=1&", n-1) + "token=s"
		_, perr := url.ParseQuery(q)
		_, err := h.checkQuery(q)
		if (perr == nil) != (err == nil) {
			t.Errorf("%d parameters: checkQuery %v, ParseQuery %v", n, err, perr)
		}
	}
	q := strings.Repeat("a=1&", maxQueryParams) + "token=s"
	if _, err := h.checkQuery(q); !errors.Is(err, errMalformedQuery) {
		t.Errorf("%d parameters: %v, want errMalformedQuery", maxQueryParams+1, err)
	}
}

// FuzzCheckQuery holds checkQuery to url.ParseQuery's reading of the same
// query: accepted exactly when ParseQuery succeeds and finds the token once
// with its secret, and then nothing named token (decoded) is left in the
// stripped query.
func FuzzCheckQuery(f *testing.F) {
	for _, q := range []string{
		"token=s+1", "token=s%201", "token=s 1", "token=s+1&token=s+1", "token=s+1&a=%",
		"token=s+1&a;b", "&&token=s+1&&", "token", "token=", "=s+1", "token=s+1=x",
		"%74oken=s%2B1", "token=s%2b1", "a=1&token=s+1&b", "token=s+1&a=%4", "token=s+1&a%41=%zz",
		"token=s+1&%=1", "x=%41%42%4&token=s+1",
	} {
		f.Add(q)
	}
	auth, err := compileAuth(caddy.NewReplacer(), map[string][]string{"token": {"s 1"}})
	if err != nil {
		f.Fatal(err)
	}
	h := &Handler{auth: auth}
	f.Fuzz(func(t *testing.T, q string) {
		parsed, perr := url.ParseQuery(q)
		want := perr == nil && len(parsed["token"]) == 1 && parsed["token"][0] == "s 1"
		stripped, err := h.checkQuery(q)
		if got := err == nil; got != want {
			t.Fatalf("checkQuery(%q) accepted=%v, ParseQuery says %v (%v)", q, got, want, perr)
		}
		if err != nil {
			return
		}
		rest, err := url.ParseQuery(stripped)
		if err != nil || rest.Has("token") {
			t.Fatalf("checkQuery(%q) left %q (%v)", q, stripped, err)
		}
	})
}

func TestEmptySecretIsAConfigError(t *testing.T) {
	repl := caddy.NewReplacer()
	_, err := compileAuth(repl, map[string][]string{"token": {"{env.RELAY_TEST_SURELY_UNSET}"}})
	if err == nil || !strings.Contains(err.Error(), "{env.RELAY_TEST_SURELY_UNSET}") {
		t.Fatalf("want an error naming the placeholder, got %v", err)
	}
	_, err = compileAuth(repl, map[string][]string{"token": {"literal-secret", ""}})
	if err == nil || strings.Contains(err.Error(), "literal-secret") {
		t.Fatalf("want an error that does not print secrets, got %v", err)
	}
}

func TestForwardedFor(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.RemoteAddr = "192.0.2.7:5555"
	if got := forwardedFor(r); got != "192.0.2.7" {
		t.Errorf("got %q", got)
	}
	r.Header.Add("X-Forwarded-For", "198.51.100.1")
	r.Header.Add("X-Forwarded-For", "198.51.100.2")
	if got := forwardedFor(r); got != "192.0.2.7" {
		t.Errorf("from a sender that is not a trusted proxy: got %q, want its own address only", got)
	}
	// Caddy's server sets this var for a peer in trusted_proxies.
	trusted := map[string]any{caddyhttp.TrustedProxyVarKey: true}
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, trusted))
	if got := forwardedFor(r); got != "198.51.100.1, 198.51.100.2, 192.0.2.7" {
		t.Errorf("from a trusted proxy: got %q, want its chain and its address", got)
	}
}

// provisioned returns a relay on the memory store whose upstream answers 200.
// Each option may change the configuration before Provision.
func provisioned(tb testing.TB, name string, options ...func(*Handler)) *Handler {
	ctx, cancel := configContext(tb)
	tb.Cleanup(cancel)
	upstream := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	tb.Cleanup(upstream.Close)
	h := &Handler{
		Name:      name,
		Upstream:  upstream.URL,
		AuthQuery: map[string][]string{"token": {"s3cret"}},
		StoreRaw:  []byte(`{"type":"memory"}`),
	}
	for _, o := range options {
		o(h)
	}
	if err := h.Provision(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// configContext is the context of a config of the test's own, as Caddy
// provisions modules with (ctx.App works in it); cancel ends it.
func configContext(tb testing.TB) (caddy.Context, context.CancelFunc) {
	root, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	return caddy.NewContext(root)
}

func serve(h *Handler, target string, body []byte) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, nil); err != nil {
		w.Code = -1
	}
	return w
}

func TestServeHTTPSetsPlaceholders(t *testing.T) {
	h := provisioned(t, "placeholders")
	body := []byte(`{"taskUUID":"t1","imageUUID":"i1"}`)
	r := httptest.NewRequest(http.MethodPost, "/?token=s3cret", bytes.NewReader(body))
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	if err := h.ServeHTTP(httptest.NewRecorder(), r, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := repl.GetString("http.webhook_relay.outcome"); got != OutcomeAccepted {
		t.Errorf("outcome placeholder %q", got)
	}
	if got, _ := repl.GetString("http.webhook_relay.key"); got == "" {
		t.Error("key placeholder empty")
	}
}

var benchBody = []byte(`{"data":[{"taskType":"imageInference","taskUUID":"9c3f4d2a-6b1e-4f7a-8d0c-2e5b7a9f1c34",` +
	`"imageUUID":"%s","imageURL":"https://im.runware.ai/image/ws/2/ii/5e1c0b7d-3a8f-4c2e-9b6d-1f0a7e4c8d21.jpg",` +
	`"seed":1234567890,"NSFWContent":false,"cost":0.0013}]}`)

// BenchmarkServeHTTP measures the whole ack path (auth, read, key, admit,
// answer) on the memory store, with unique keys.
func BenchmarkServeHTTP(b *testing.B) {
	// acks outrun the delivery here, so the default backlog bound would
	// turn a long run into 503s
	h := provisioned(b, "bench", func(h *Handler) { h.MaxBacklog = 1 << 30 })
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := fmt.Appendf(nil, string(benchBody), fmt.Sprintf("img-%d", n.Add(1)))
			if w := serve(h, "/hook?token=s3cret&a=1", body); w.Code != http.StatusOK {
				b.Fatalf("status %d", w.Code)
			}
		}
	})
}
