package webhookrelay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// fuzzSecret is the token of the relay provisioned() sets up.
const fuzzSecret = "s3cret"

// recordingStore is the relay's store seen from the ack path: it notes
// the last entry passed to Admit and what Admit answered, so that a test
// can see what was written (the stored query in particular).
type recordingStore struct {
	queue.Admitter
	mu        sync.Mutex
	last      *queue.Entry
	admission queue.Admission
	err       error
}

func (s *recordingStore) Admit(ctx context.Context, e *queue.Entry) (queue.Admission, error) {
	a, err := s.Admitter.Admit(ctx, e)
	s.mu.Lock()
	s.last, s.admission, s.err = e, a, err
	s.mu.Unlock()
	return a, err
}

// take returns the last Admit's entry and result, and forgets them.
func (s *recordingStore) take() (*queue.Entry, queue.Admission, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, a, err := s.last, s.admission, s.err
	s.last, s.admission, s.err = nil, 0, nil
	return e, a, err
}

// recorded provisions a relay (provisioned) and puts a recording wrapper
// around its store for the ack path; the delivery engine keeps the
// original, which is the same store underneath. The window is shortened so
// that a long fuzz run does not pile up dedupe markers.
func recorded(tb testing.TB, name string) (*Handler, *recordingStore) {
	h := provisioned(tb, name)
	rec := &recordingStore{Admitter: h.admitter}
	h.relay.store.SetLimits(time.Minute, DefaultMaxBacklog)
	h.admitter = rec
	return h, rec
}

// fuzzRequest builds a request by hand: httptest.NewRequest panics on
// methods and targets a real server would have refused before any handler
// runs, and the fuzzer should reach the handler with whatever it likes.
// headers holds "Name: value" lines.
func fuzzRequest(method, rawQuery, headers string, body []byte, chunked bool) *http.Request {
	r := &http.Request{
		Method:     method,
		URL:        &url.URL{Path: "/hook", RawQuery: rawQuery},
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header),
		Body:       io.NopCloser(bytes.NewReader(body)),
		Host:       "relay.test",
		RemoteAddr: "192.0.2.1:4321",
		RequestURI: "/hook?" + rawQuery,
	}
	r.ContentLength = int64(len(body))
	if chunked {
		r.ContentLength = -1
		r.TransferEncoding = []string{"chunked"}
	}
	for line := range strings.SplitSeq(headers, "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		r.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	repl := caddy.NewReplacer()
	return r.WithContext(context.WithValue(context.Background(), caddy.ReplacerCtxKey, repl))
}

// tokenOK says, independently of the handler, whether rawQuery carries the
// token exactly once and right: url.ParseQuery decodes names and values
// (so "tok%65n" is "token" and "+" is a space) and fails on a malformed
// query, whose parameters then cannot be trusted.
func tokenOK(rawQuery string) bool {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return false
	}
	return len(q["token"]) == 1 && q["token"][0] == fuzzSecret
}

var allowedStatus = map[int]bool{200: true, 400: true, 401: true, 405: true, 413: true, 503: true}

// FuzzServeHTTP sends random methods, query strings, headers and bodies
// through the ack path of a provisioned relay (memory store, token
// "s3cret", default runware key, 32 MiB max_body). It checks that
// ServeHTTP never panics, answers only 200/400/401/405/413/503, answers
// 200 only with an exact JSON status line and Content-Type
// application/json, never answers 200 without the right token (405 for a
// method other than POST, 401 for a bad token), and that no accepted
// payload is stored with the token in its query.
func FuzzServeHTTP(f *testing.F) {
	img := `{"taskType":"imageInference","taskUUID":"t-1","imageUUID":"i-1"}`
	for _, seed := range []struct {
		method, query, headers, body string
		chunked                      bool
	}{
		{"POST", "token=s3cret", "Content-Type: application/json", img, false},
		{"POST", "token=s3cret", "Content-Type: application/json", img, true},
		{"POST", "token=s3cret&a=1&b=%20x", "Content-Type: application/json\nUser-Agent: Runware", `{"data":[{"taskUUID":"t-2","imageUUID":"i-2"},{"taskUUID":"t-2","imageUUID":"i-3"}]}`, false},
		{"POST", "tok%65n=s3cret&x=1", "", `{"taskUUID":"t-3","videoUUID":"v"}`, false},
		{"POST", "token=s3cr%65t", "", `{"errors":[{"code":"timeout","taskUUID":"t-4"}]}`, false},
		{"POST", "token=s3cret&token=s3cret", "", img, false},
		{"POST", "token=wrong", "", img, false},
		{"POST", "", "", img, false},
		{"POST", "token=s3cret%00", "", img, false},
		{"POST", "token=+s3cret", "", img, false},
		{"POST", "token=s3cret;x=1", "", img, false},
		{"POST", "token=s3cret&x=%zz", "", img, false},
		{"POST", "token=s3cret&x=%ff%fe", "", img, false},
		{"POST", "token=s3cret&x=\xff\xfe", "", img, false},
		{"POST", "TOKEN=s3cret", "", img, false},
		{"POST", "token=s3cret", "", `{"taskUUID":`, false},
		{"POST", "token=s3cret", "", "", false},
		{"POST", "token=s3cret", "", "not json", false},
		{"POST", "token=s3cret", "", strings.Repeat("[", 10000), false},
		{"POST", "token=s3cret", "", "\xef\xbb\xbf" + img, false},
		{"POST", "token=s3cret", "", "{\"taskUUID\":\"\xff\xfe\",\"imageUUID\":\"\xc3\x28\"}", false},
		{"POST", "token=s3cret", "X-Forwarded-For: 198.51.100.1\nX-Forwarded-For: \xff", `{"caption":"x"}`, false},
		{"GET", "token=s3cret", "", "", false},
		{"HEAD", "", "", "", false},
		{"post", "token=s3cret", "", img, false},
		{"PUT", "token=s3cret", "", img, false},
		{"", "", "", "", false},
		{"POST", "&&token=s3cret&&", "", img, false},
		{"POST", "token%3Ds3cret", "", img, false},
		{"POST", "token==s3cret", "", img, false},
	} {
		f.Add(seed.method, seed.query, seed.headers, []byte(seed.body), seed.chunked)
	}

	h, rec := recorded(f, "fuzz-serve")
	f.Fuzz(func(t *testing.T, method, rawQuery, headers string, body []byte, chunked bool) {
		r := fuzzRequest(method, rawQuery, headers, body, chunked)
		w := httptest.NewRecorder()
		err := h.ServeHTTP(w, r, nil)

		entry, admission, admitErr := rec.take()
		stored := entry != nil && admitErr == nil && admission == queue.Accepted

		status := http.StatusOK
		if err != nil {
			var he caddyhttp.HandlerError
			if !errors.As(err, &he) {
				t.Fatalf("error %v is not a caddyhttp.HandlerError", err)
			}
			status = he.StatusCode
			// the error's answer, and only that: its status and JSON body
			var answer struct{ Status, Error string }
			if w.Code != status || w.Header().Get("Content-Type") != "application/json" ||
				json.Unmarshal(w.Body.Bytes(), &answer) != nil || answer.Status != "error" || answer.Error == "" {
				t.Fatalf("error %v answered %d %q, want %d with a JSON error body", err, w.Code, w.Body.Bytes(), status)
			}
			if strings.Contains(w.Body.String(), fuzzSecret) {
				t.Fatalf("the error answer %q holds the secret", w.Body.Bytes())
			}
		} else {
			status = w.Code
		}
		if !allowedStatus[status] {
			t.Fatalf("status %d (err %v)", status, err)
		}

		switch {
		case method != http.MethodPost:
			if status != http.StatusMethodNotAllowed {
				t.Fatalf("method %q: status %d, want 405", method, status)
			}
			if allow := w.Header().Get("Allow"); allow != http.MethodPost {
				t.Fatalf("405 with Allow %q", allow)
			}
		case !tokenOK(rawQuery):
			if status != http.StatusUnauthorized {
				t.Fatalf("query %q without the right token (exactly once): status %d, want 401", rawQuery, status)
			}
		}
		if status != http.StatusOK {
			if stored {
				t.Fatalf("status %d, yet the payload was stored", status)
			}
			if status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
				t.Fatalf("503 without Retry-After")
			}
			return
		}

		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("200 with Content-Type %q", ct)
		}
		got := w.Body.String()
		switch got {
		case `{"status":"accepted"}` + "\n":
			if !stored {
				t.Fatalf("answered accepted, but the store did not accept anything (%v, %v)", admission, admitErr)
			}
			if !bytes.Equal(entry.Body, body) {
				t.Fatalf("stored body differs from the one received")
			}
			q, err := url.ParseQuery(entry.Request.RawQuery)
			if err != nil {
				t.Fatalf("stored query %q does not parse: %v", entry.Request.RawQuery, err)
			}
			if v, ok := q["token"]; ok {
				t.Fatalf("stored query %q still carries the token %q (received %q)", entry.Request.RawQuery, v, rawQuery)
			}
			// whatever is stored came from the received query, in order
			rest := rawQuery
			for part := range strings.SplitSeq(entry.Request.RawQuery, "&") {
				i := strings.Index(rest, part)
				if i < 0 {
					t.Fatalf("stored query %q is not part of the received %q", entry.Request.RawQuery, rawQuery)
				}
				rest = rest[i+len(part):]
			}
		case `{"status":"duplicate"}` + "\n":
			if stored || admission != queue.Duplicate {
				t.Fatalf("answered duplicate, but the store said %v, %v", admission, admitErr)
			}
		default:
			t.Fatalf("200 with body %q", got)
		}
	})
}

// fuzzCaddyfileSite wraps a directive's text into a whole Caddyfile.
func fuzzCaddyfileSite(rest string) string {
	return ":8080 {\n\twebhook_relay " + rest + "\n\trespond 404\n}\n"
}

// FuzzCaddyfile feeds random text after "webhook_relay" to the Handler's
// UnmarshalCaddyfile and to the whole Caddyfile adapter. Neither may
// panic; each either fails or gives a config that marshals to JSON, and
// the Handler's JSON survives a round trip through json.Unmarshal.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"http://127.0.0.1:3000/hook",
		"/hooks/runware http://127.0.0.1:3000/runware?src=relay {\n\tname runware\n\tauth_query token {env.WEBHOOK_TOKEN} {env.WEBHOOK_TOKEN_PREVIOUS}\n\tauth_query sig {env.WEBHOOK_SIG}\n\tkey runware header.X-Request-Id query.id json.data.0.taskUUID body\n\twindow 48h\n\tstore memory\n\tmax_body 10MiB\n\tmax_backlog 5000\n\ttimeout 10s\n\tconcurrency 4\n\tbackoff 100ms 1m\n\tgive_up_after 24h\n\theader_up Authorization \"Bearer {env.UPSTREAM_TOKEN}\"\n\theader_up X-Handler webhook_relay\n}",
		"{\n\tupstream http://127.0.0.1:3000/github\n\tname github\n\tkey header.X-GitHub-Delivery\n}",
		"@github {\n\tupstream http://x\n}",
		"* http://x {\n\tstore bolt /var/lib/caddy/relay.db\n}",
		"http://x {\n\tstore bolt\n}",
		"http://x {\n\tstore redis redis://localhost:6379/0 {\n\t\tusername u\n\t\tpassword {env.REDIS_PASSWORD}\n\t\tdb 2\n\t\tsentinel_master m\n\t\taddresses a:1 b:2\n\t\tkey_prefix p\n\t\tpool_size 8\n\t\tdial_timeout 1s\n\t\tread_timeout 2s\n\t\twrite_timeout 3s\n\t\tvisibility_timeout 1m\n\t\tdurable_ack\n\t}\n}",
		"http://x {\n\tstore redis\n}",
		"http://x {\n\tstore disk\n}",
		"http://x {\n\tstore memory {\n\t\tsize 1\n\t}\n}",
		"http://x {\n\tretries 5\n}",
		"http://x {\n\twindow 1h\n\twindow 2h\n}",
		"http://x {\n\tauth_query token\n}",
		"http://x {\n\tauth_query\n}",
		"http://x {\n\tmax_body 0\n}",
		"http://x {\n\tmax_body 18446744073709551615\n}",
		"http://x {\n\tmax_body 99999999999999999999EiB\n}",
		"http://x {\n\tmax_backlog 99999999999999999999\n}",
		"http://x {\n\tconcurrency -4\n}",
		"http://x {\n\tbackoff 10ms\n}",
		"http://x {\n\tbackoff 1d 1ms\n}",
		"http://x {\n\twindow 9999999999999999h\n}",
		"http://x {\n\theader_up X-Only-Name\n}",
		"http://x {\n\theader_up \"\" \"\"\n}",
		"http://x http://y",
		"{\n\tupstream\n}",
		"http://x {\n\tupstream http://y\n}",
		"http://x {\n\tkey\n}",
		"http://x {\n",
		"http://x }",
		"`http://x` {\n\tname \"a b\"\n}",
		"http://x {\n\tname <<EOF\n\tline\n\tEOF\n}",
		"{$UNSET_FUZZ_VAR} {\n\tname {$UNSET_FUZZ_VAR:default}\n}",
		"\"\\\"",
		"http://x {\n\t\xff\xfe \xc3\x28\n}",
		"",
	} {
		f.Add(seed)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		f.Fatal("no caddyfile adapter")
	}
	f.Fuzz(func(t *testing.T, rest string) {
		// the Handler's own parser, through a dispenser (NewTestDispenser
		// would log.Fatal on a tokenizer error, so tokenize here)
		if tokens, err := caddyfile.Tokenize([]byte("webhook_relay "+rest), "Caddyfile"); err == nil {
			h := new(Handler)
			if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err == nil {
				js, err := json.Marshal(h)
				if err != nil {
					t.Fatalf("parsed %q into a Handler that does not marshal: %v", rest, err)
				}
				var again Handler
				if err := json.Unmarshal(js, &again); err != nil {
					t.Fatalf("the Handler's JSON %s does not unmarshal: %v", js, err)
				}
				js2, err := json.Marshal(&again)
				if err != nil || !bytes.Equal(js, js2) {
					t.Fatalf("the Handler's JSON does not survive a round trip:\n%s\n%s (%v)", js, js2, err)
				}
			}
		}

		// the whole adapter; "import" would read files, which is not what
		// is being tested
		if strings.Contains(rest, "import") {
			return
		}
		out, _, err := adapter.Adapt([]byte(fuzzCaddyfileSite(rest)), nil)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("adapter gave invalid JSON for %q: %s", rest, out)
		}
	})
}
