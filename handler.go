package webhookrelay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// Outcomes of the ack path, as set in {http.webhook_relay.outcome}.
const (
	OutcomeAccepted         = "accepted"
	OutcomeDuplicate        = "duplicate"
	OutcomeUnauthorized     = "unauthorized"
	OutcomeTooLarge         = "too_large"
	OutcomeBadRequest       = "bad_request"
	OutcomeTimeout          = "timeout"
	OutcomeUnavailable      = "unavailable"
	OutcomeMethodNotAllowed = "method_not_allowed"
)

// retryAfterSeconds is what a 503 asks the sender to wait.
const retryAfterSeconds = "5"

var (
	respAccepted  = []byte(`{"status":"accepted"}` + "\n")
	respDuplicate = []byte(`{"status":"duplicate"}` + "\n")
)

// ServeHTTP is the ack path: check, read, key, admit, answer. It never calls
// next, and nothing it starts touches the request after it returns.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	start := time.Now()
	outcome, key, err := h.ack(w, r)
	h.metrics.request(outcome, time.Since(start))
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl != nil {
		repl.Set("http.webhook_relay.outcome", outcome)
		repl.Set("http.webhook_relay.key", key)
	}
	if err != nil {
		answerError(w, r, err)
	}
	return err
}

func (h *Handler) ack(w http.ResponseWriter, r *http.Request) (outcome, key string, err error) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return OutcomeMethodNotAllowed, "", refuse(http.StatusMethodNotAllowed, "",
			fmt.Errorf("webhooks are delivered with POST, not %s", r.Method))
	}

	rawQuery, err := h.checkQuery(r.URL.RawQuery)
	switch {
	case errors.Is(err, errWrongAuth):
		// the sender is not told which parameter is expected
		return OutcomeUnauthorized, "", refuse(http.StatusUnauthorized, err.Error(),
			fmt.Errorf("%v (%s)", err, h.authParamNames()))
	case err != nil:
		return OutcomeUnauthorized, "", refuse(http.StatusUnauthorized, "", err)
	}

	if c, at := illegalQueryByte(rawQuery); at >= 0 {
		return OutcomeBadRequest, "", refuse(http.StatusBadRequest, "",
			fmt.Errorf("the query string holds %q at byte %d, which a URL may not carry as is: percent-encode it", c, at))
	}

	if r.ContentLength > h.MaxBody {
		return OutcomeTooLarge, "", tooLarge(h.MaxBody)
	}
	if h.BodyTimeout > 0 {
		// not supported by every writer (tests' recorders): then the
		// server's own read timeouts are all there is
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Duration(h.BodyTimeout)))
	}
	body, taken, err := readBody(r, h.MaxBody, h.relay.memory)
	defer h.relay.memory.Give(taken)
	// Nothing keeps the body past the admit: the stores copy it (or have
	// written it) before Admit returns, and the key is a string of its own.
	defer bodybuf.Free(body)
	if err != nil {
		switch {
		case errors.Is(err, errTooLarge):
			return OutcomeTooLarge, "", tooLarge(h.MaxBody)
		case errors.Is(err, errNoMemory):
			w.Header().Set("Retry-After", retryAfterSeconds)
			return OutcomeUnavailable, "", refuse(http.StatusServiceUnavailable,
				"max_memory is taken by other webhooks being received or delivered; retry later",
				fmt.Errorf("relay %s: max_memory (%d bytes) is taken by other webhooks being received or delivered; retry later", h.Name, h.MaxMemory))
		case isTimeout(err):
			return OutcomeTimeout, "", refuse(http.StatusRequestTimeout, "",
				fmt.Errorf("the body did not arrive within body_timeout (%s)", time.Duration(h.BodyTimeout)))
		}
		return OutcomeBadRequest, "", refuse(http.StatusBadRequest, "",
			fmt.Errorf("reading the request body: %v", err))
	}

	if h.verifier != nil {
		if err := h.verifier.Verify(r.Header, body, time.Now()); err != nil {
			return OutcomeUnauthorized, "", refuse(http.StatusUnauthorized, "",
				fmt.Errorf("verify %s: %v", h.verifier.Scheme(), err))
		}
	}

	var query url.Values
	if h.keyer.NeedsQuery() {
		query, _ = url.ParseQuery(r.URL.RawQuery) // checked above when it matters
	}
	key, err = h.keyer.Key(r.Header, query, body)
	if err != nil {
		return OutcomeBadRequest, "", refuse(http.StatusBadRequest, "",
			errors.New("the body is not valid JSON; this relay's key reads JSON (send JSON, or configure key body to accept any body)"))
	}

	entry := &queue.Entry{
		Key:  key,
		Body: body,
		Request: queue.RequestMeta{
			RawQuery:     rawQuery,
			ContentType:  r.Header.Get("Content-Type"),
			UserAgent:    r.Header.Get("User-Agent"),
			ForwardedFor: forwardedFor(r),
			Headers:      keepHeaders(r.Header, h.keep),
		},
	}
	// A sender hanging up must not abort an admit half way. The store
	// bounds its own wait (queue.AdmitTimeout): only a store that talks to
	// a server can hang, and a timer per request would cost every store.
	admission, err := h.admitter.Admit(context.WithoutCancel(r.Context()), entry)
	if err != nil {
		w.Header().Set("Retry-After", retryAfterSeconds)
		if errors.Is(err, queue.ErrBacklogFull) {
			return OutcomeUnavailable, key, refuse(http.StatusServiceUnavailable, "backlog full; retry later",
				fmt.Errorf("relay %s: backlog full (%d payloads waiting for the upstream); retry later", h.Name, h.MaxBacklog))
		}
		h.relay.storeErr.Fail(h.logger, "cannot store webhooks; answering 503", err, zap.String("relay", h.Name))
		return OutcomeUnavailable, key, refuse(http.StatusServiceUnavailable, "store unavailable; retry later",
			fmt.Errorf("relay %s: store unavailable; retry later", h.Name))
	}
	h.relay.storeErr.Ok(h.logger, "store reachable again; accepting webhooks")

	// a fresh slice: later handlers (header) may edit values in place
	w.Header()["Content-Type"] = []string{"application/json"}
	w.WriteHeader(http.StatusOK)
	if admission == queue.Duplicate {
		_, _ = w.Write(respDuplicate)
		return OutcomeDuplicate, key, nil
	}
	h.relay.engine.Wake()
	_, _ = w.Write(respAccepted)
	return OutcomeAccepted, key, nil
}

var (
	errTooLarge = errors.New("body too large")
	errNoMemory = errors.New("no room in max_memory")
)

// isTimeout tells a read deadline that passed (body_timeout) from other
// read errors.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func tooLarge(limit int64) error {
	return refuse(http.StatusRequestEntityTooLarge, "",
		fmt.Errorf("body larger than max_body (%d bytes)", limit))
}

// readBody reads the whole body, at most limit bytes, and returns it with
// the bytes it took from the memory budget, for the caller to give back,
// and to bodybuf.Free once nothing uses the body any more.
//
// An announced Content-Length is taken from the budget whole, before a byte
// is read: all or nothing, so that many large bodies arriving at once never
// each hold a part of the budget and all starve. The buffer is then made
// of the announced length at once: a large one is mapped outside Go's heap
// (bodybuf), where only the pages written take memory, so a sender who
// announces a large body and stalls holds no more than it sent (and,
// through body_timeout, its share of the budget only for so long), and no
// copies are left behind for the collector. Without a Content-Length (or
// with more bytes than announced) the buffer doubles from 64 KiB, and the
// budget is taken as it grows.
func readBody(r *http.Request, limit int64, mem *budget.Budget) (body []byte, taken int64, err error) {
	const firstChunk = 64 << 10
	want := limit + 1 // one byte more than allowed shows an oversized body
	if r.ContentLength >= 0 {
		want = min(r.ContentLength+1, want)
		if !mem.TryTake(want) {
			return nil, 0, errNoMemory
		}
		taken = want
	}
	var buf []byte
	defer func() {
		if err != nil {
			bodybuf.Free(buf)
		}
	}()
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > limit {
				return nil, taken, errTooLarge
			}
			size := want // the announced length, at once
			if cap(buf) > 0 || r.ContentLength < 0 {
				if int64(cap(buf)) >= want {
					want = limit + 1 // more than was announced: go on doubling to the limit
				}
				size = min(max(2*int64(cap(buf)), firstChunk), want)
			}
			if more := size - taken; more > 0 {
				if !mem.TryTake(more) {
					return nil, taken, errNoMemory
				}
				taken += more
			}
			var grown []byte
			if size <= firstChunk {
				// the heap: a mapping of the first chunk would cost every
				// small body without a Content-Length two system calls
				grown = make([]byte, len(buf), size)
			} else {
				grown = bodybuf.Alloc(int(size))[:len(buf)]
			}
			copy(grown, buf)
			bodybuf.Free(buf)
			buf = grown
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, taken, err
		}
	}
	if int64(len(buf)) > limit {
		return nil, taken, errTooLarge
	}
	return buf, taken, nil
}

// forwardedFor is the incoming X-Forwarded-For chain plus the client.
func forwardedFor(r *http.Request) string {
	client, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		client = r.RemoteAddr
	}
	// A chain from anyone but a trusted proxy is made up: the app would
	// take the sender's word for its own address (reverse_proxy drops it
	// the same way).
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	if prior := r.Header.Values("X-Forwarded-For"); trusted && len(prior) > 0 {
		return strings.Join(prior, ", ") + ", " + client
	}
	return client
}

// keepHeaders copies the values of the headers named in keep (canonical
// names) from h, in keep's order.
func keepHeaders(h http.Header, keep []string) []queue.HeaderField {
	var out []queue.HeaderField
	for _, name := range keep {
		for _, v := range h[name] {
			out = append(out, queue.HeaderField{Name: name, Value: v})
		}
	}
	return out
}

// illegalQueryByte finds the first byte of a raw query that may not stand
// unencoded in a URL: controls, space, non-ASCII, '#' and the characters
// RFC 3986 excludes. Such a query reaches the relay over HTTP/2, where the
// request line is not parsed, and would break the upstream's. It returns
// -1 when there is none.
func illegalQueryByte(rawQuery string) (byte, int) {
	for i := 0; i < len(rawQuery); i++ {
		c := rawQuery[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"#<>\\^`{|}", c) >= 0 {
			return c, i
		}
	}
	return 0, -1
}
