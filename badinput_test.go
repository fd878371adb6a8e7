package webhookrelay

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// untouchable is a request body that fails the test if anything reads it.
type untouchable struct{ t *testing.T }

func (u untouchable) Read([]byte) (int, error) {
	u.t.Helper()
	u.t.Error("the body was read, but the request should have been refused before that")
	return 0, io.EOF
}

// brokenBody gives some bytes, then fails the way a connection that drops
// or times out does.
type brokenBody struct {
	data []byte
	err  error
}

func (b *brokenBody) Read(p []byte) (int, error) {
	if len(b.data) == 0 {
		return 0, b.err
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

// statusOf runs r through h and returns the status, from the recorder or
// from the returned caddyhttp.HandlerError.
func statusOf(t *testing.T, h *Handler, r *http.Request) (int, *httptest.ResponseRecorder) {
	t.Helper()
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, r, nil)
	if err == nil {
		return w.Code, w
	}
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("error %v is not a caddyhttp.HandlerError", err)
	}
	return he.StatusCode, w
}

// TestBadInputRefusedBeforeTheBody: the method, the auth parameters and a
// Content-Length over max_body are checked before a byte of the body is
// read.
func TestBadInputRefusedBeforeTheBody(t *testing.T) {
	h, rec := recorded(t, "badinput-early")
	for _, tc := range []struct {
		name, method, query string
		contentLength       int64
		status              int
	}{
		{"GET", http.MethodGet, "token=s3cret", 10, http.StatusMethodNotAllowed},
		{"no token", http.MethodPost, "", 10, http.StatusUnauthorized},
		{"wrong token", http.MethodPost, "token=nope", 10, http.StatusUnauthorized},
		{"token twice", http.MethodPost, "token=s3cret&tok%65n=s3cret", 10, http.StatusUnauthorized},
		{"malformed query", http.MethodPost, "token=s3cret;a=b", 10, http.StatusUnauthorized},
		{"raw space in the kept query", http.MethodPost, "token=s3cret&a=b c", 10, http.StatusBadRequest},
		{"# in the kept query", http.MethodPost, "token=s3cret&a=b#c", 10, http.StatusBadRequest},
		{"raw non-ASCII in the kept query", http.MethodPost, "a=\xc3\xa9&token=s3cret", 10, http.StatusBadRequest},
		{"control byte in the kept query", http.MethodPost, "a=\x01&token=s3cret", 10, http.StatusBadRequest},
		{"quote in the kept query", http.MethodPost, "token=s3cret&a=\"b\"", 10, http.StatusBadRequest},
		{"Content-Length over max_body", http.MethodPost, "token=s3cret", DefaultMaxBody + 1, http.StatusRequestEntityTooLarge},
		{"Content-Length far over max_body", http.MethodPost, "token=s3cret", 1 << 62, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fuzzRequest(tc.method, tc.query, "Content-Type: application/json", nil, false)
			r.Body = io.NopCloser(untouchable{t})
			r.ContentLength = tc.contentLength
			if got, _ := statusOf(t, h, r); got != tc.status {
				t.Errorf("status %d, want %d", got, tc.status)
			}
			if e, _, _ := rec.take(); e != nil {
				t.Errorf("the store was asked to admit %+v", e)
			}
		})
	}
}

// TestBadInputBodyFailsMidway: a body that breaks off (the client went
// away, the server's read timeout fired) is a 400 and nothing is stored,
// even when what did arrive is a complete JSON document.
func TestBadInputBodyFailsMidway(t *testing.T) {
	h, rec := recorded(t, "badinput-midway")
	for _, cause := range []error{io.ErrUnexpectedEOF, errors.New("read tcp: i/o timeout"), http.ErrBodyReadAfterClose} {
		t.Run(cause.Error(), func(t *testing.T) {
			r := fuzzRequest(http.MethodPost, "token=s3cret", "Content-Type: application/json", nil, false)
			r.Body = io.NopCloser(&brokenBody{data: []byte(`{"n":1}   `), err: cause})
			r.ContentLength = 1000
			if got, _ := statusOf(t, h, r); got != http.StatusBadRequest {
				t.Errorf("status %d, want 400", got)
			}
			if e, _, _ := rec.take(); e != nil {
				t.Errorf("the store was asked to admit %q", e.Body)
			}
		})
	}
}

// TestBadInputBodyAtTheLimit: a body of exactly max_body is read whole,
// one byte more is 413, with or without a Content-Length; and a
// Content-Length that understates the body does not let more than
// max_body in.
func TestBadInputBodyAtTheLimit(t *testing.T) {
	h, rec := recorded(t, "badinput-limit")
	h.MaxBody = 64
	exact := func(n int) []byte {
		prefix := `{"taskUUID":"limit","imageUUID":"`
		return []byte(prefix + strings.Repeat("x", n-len(prefix)-2) + `"}`)
	}
	for _, tc := range []struct {
		name    string
		body    []byte
		chunked bool
		status  int
	}{
		{"exactly max_body", exact(64), false, http.StatusOK},
		{"exactly max_body, chunked", exact(64), true, http.StatusOK}, // a duplicate by then
		{"one byte over", append(exact(64), ' '), false, http.StatusRequestEntityTooLarge},
		{"one byte over, chunked", append(exact(64), ' '), true, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fuzzRequest(http.MethodPost, "token=s3cret", "", tc.body, tc.chunked)
			if got, _ := statusOf(t, h, r); got != tc.status {
				t.Errorf("status %d, want %d", got, tc.status)
			}
			e, _, _ := rec.take()
			if tc.status != http.StatusOK && e != nil {
				t.Errorf("the store was asked to admit %d bytes", len(e.Body))
			}
		})
	}
	t.Run("Content-Length understated", func(t *testing.T) {
		body := append(exact(64), bytes.Repeat([]byte(" "), 100)...)
		r := fuzzRequest(http.MethodPost, "token=s3cret", "", body, false)
		r.ContentLength = 10
		if got, _ := statusOf(t, h, r); got != http.StatusRequestEntityTooLarge {
			t.Errorf("status %d, want 413", got)
		}
	})
}

// TestBadInputStoredQueryHasNoToken: however the token parameter is spelt
// in an accepted request, the query kept with the payload (and forwarded)
// has it removed, and keeps every other parameter as it came.
func TestBadInputStoredQueryHasNoToken(t *testing.T) {
	h, rec := recorded(t, "badinput-stored")
	for i, tc := range []struct{ query, stored string }{
		{"token=s3cret", ""},
		{"tok%65n=s3cret&a=1", "a=1"},
		{"%74oken=s3cr%65t&b=%ff&c", "b=%ff&c"},
		{"x=token&token=s3cret&y=s3cret", "x=token&y=s3cret"},
		{"a=%20&&token=s3cret&&b=+", "a=%20&b=+"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			body := []byte(`{"taskUUID":"stored","imageUUID":"` + string(rune('a'+i)) + `"}`)
			r := fuzzRequest(http.MethodPost, tc.query, "", body, false)
			if got, w := statusOf(t, h, r); got != http.StatusOK || w.Body.String() != string(respAccepted) {
				t.Fatalf("status %d %q, want 200 accepted", got, w.Body.String())
			}
			e, a, err := rec.take()
			if e == nil || a != queue.Accepted || err != nil {
				t.Fatalf("store: %v %v", a, err)
			}
			if e.Request.RawQuery != tc.stored {
				t.Errorf("stored query %q, want %q", e.Request.RawQuery, tc.stored)
			}
		})
	}
}

// TestBadInputBodyBuffer: a body that stalls holds about what arrived on
// the heap, not the announced Content-Length (a large buffer is a mapping,
// whose pages take memory only once written); the announced length is
// taken from the budget whole, up front, and given back whatever happens;
// a whole body is read into one buffer of its length, outside the heap.
func TestBadInputBodyBuffer(t *testing.T) {
	mem := budget.New(64<<20, 0)
	for _, tc := range []struct {
		arrived  int
		maxAlloc uint64
	}{
		{10, 256 << 10},
		{100 << 10, 1 << 20},
		{3 << 20, 12 << 20},
	} {
		r := httptest.NewRequest(http.MethodPost, "/", &brokenBody{data: bytes.Repeat([]byte(" "), tc.arrived), err: io.ErrUnexpectedEOF})
		r.ContentLength = 32 << 20
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, taken, err := readBody(r, 32<<20, mem, "c")
		runtime.ReadMemStats(&after)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%d bytes of 32 MiB arrived: err %v", tc.arrived, err)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > tc.maxAlloc {
			t.Errorf("%d bytes of 32 MiB arrived: %d bytes allocated, want at most %d", tc.arrived, alloc, tc.maxAlloc)
		}
		if taken != 32<<20 {
			t.Errorf("%d bytes of 32 MiB arrived: %d bytes taken from the budget, want the announced length", tc.arrived, taken)
		}
		mem.Give("c", taken)
	}

	// all or nothing: a body announced larger than what is free is refused
	// before anything is read or taken
	if err := mem.Take("other", 40<<20); err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "/", untouchable{t})
	r.ContentLength = 30 << 20
	if _, taken, err := readBody(r, 32<<20, mem, "c"); !errors.Is(err, budget.ErrFull) || taken != 0 {
		t.Errorf("30 MiB announced with 24 MiB free: taken %d, err %v; want nothing taken and budget.ErrFull", taken, err)
	}
	mem.Give("other", 40<<20)
	if used := mem.Used(); used != 0 {
		t.Errorf("budget holds %d bytes after every body was given back", used)
	}

	full := bytes.Repeat([]byte(" "), 5<<20)
	r = httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(full))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	mapped := bodybuf.Mapped()
	body, taken, err := readBody(r, 32<<20, mem, "c")
	runtime.ReadMemStats(&after)
	if err != nil || !bytes.Equal(body, full) {
		t.Fatalf("a whole 5 MiB body: %d bytes, %v", len(body), err)
	}
	// one buffer of the announced length, outside Go's heap: no doubling
	// copies left for the collector, and gone at Free
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("reading a 5 MiB body allocated %d bytes on the heap; want it outside (bodybuf)", alloc)
	}
	if runtime.GOOS == "linux" {
		if got := bodybuf.Mapped() - mapped; got != int64(len(full)) {
			t.Errorf("reading a 5 MiB body mapped %d bytes; want one buffer of its length", got)
		}
		bodybuf.Free(body)
		if bodybuf.Mapped() != mapped {
			t.Errorf("Free left %d bytes mapped", bodybuf.Mapped()-mapped)
		}
	}
	if want := int64(len(full)); taken != want {
		t.Errorf("a whole 5 MiB body took %d bytes of the budget, want %d (its Content-Length)", taken, want)
	}
}

// A body shorter than its Content-Length (HTTP/3 lets one through, and so
// may a handler before the relay) is refused, not kept in a buffer of the
// announced size that is larger than what it holds: the stores decide how
// to hand a body on by its buffer, and a short body in a large mapped
// buffer would be treated as a small one.
func TestBadInputBodyShorterThanAnnounced(t *testing.T) {
	mem := budget.New(64<<20, 0)
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(strings.Repeat("x", 100)))
	r.ContentLength = 1 << 20
	mapped := bodybuf.Mapped()
	body, taken, err := readBody(r, 32<<20, mem, "c")
	if !errors.Is(err, io.ErrUnexpectedEOF) || body != nil {
		t.Errorf("100 bytes announced as 1 MiB: %d bytes, %v; want io.ErrUnexpectedEOF", len(body), err)
	}
	mem.Give("c", taken)
	if left := bodybuf.Mapped() - mapped; left != 0 {
		t.Errorf("the refused body left %d bytes mapped", left)
	}
}
