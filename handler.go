package webhookrelay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/filter"
	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/internal/tracectx"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/verify"
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
	// OutcomeChallenge is a sender's URL handshake, answered by the relay
	// itself: never stored, deduped or forwarded.
	OutcomeChallenge = "challenge"
	// OutcomeIgnored is a payload no destination's filter takes: answered
	// 200 {"status":"ignored"}, its key marked seen, nothing stored.
	OutcomeIgnored = "ignored"
)

// retryAfterSeconds is what a 503 asks the sender to wait.
const retryAfterSeconds = "5"

var (
	respAccepted  = []byte(`{"status":"accepted"}` + "\n")
	respDuplicate = []byte(`{"status":"duplicate"}` + "\n")
	respIgnored   = []byte(`{"status":"ignored"}` + "\n")
)

// ServeHTTP is the ack path: check, read, key, admit, answer, or answer a
// sender's URL handshake (handshake.go). It never calls
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
	bodyRead := false
	defer func() {
		if err != nil && !bodyRead {
			closeUnread(w, r)
		}
	}()
	get := r.Method == http.MethodGet && h.answersGET()
	if r.Method != http.MethodPost && !get {
		return h.methodNotAllowed(w, r.Method)
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
	if err := h.checkAuthHeaders(r.Header); err != nil {
		return OutcomeUnauthorized, "", refuse(http.StatusUnauthorized, "", err)
	}
	if !h.checkBasic(r.Header) {
		w.Header().Set("WWW-Authenticate", basicChallenge)
		return OutcomeUnauthorized, "", refuse(http.StatusUnauthorized, "", errWrongBasic)
	}
	// the handshakes that come before any signature: no body is read
	if get {
		return h.handshakeGET(w, r, rawQuery)
	}
	if h.Challenge == ChallengeGraph {
		if token, err := graphValidation(rawQuery); err != nil {
			return OutcomeBadRequest, "", refuse(http.StatusBadRequest, "", err)
		} else if token != nil {
			return h.answer(w, r, plainAnswer(*token), false)
		}
	}
	// what the signature headers alone show, before a byte of the body
	// is read or a byte of max_memory taken
	if h.verifier != nil {
		if err := h.verifier.CheckHeaders(r, time.Now()); err != nil {
			return h.verifyRefused(w, err)
		}
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
	client := clientKey(r)
	body, taken, err := readBody(r, h.MaxBody, h.relay.memory, client)
	defer h.relay.memory.Give(client, taken)
	// Nothing keeps the body past the admit: the stores copy it (or have
	// written it) before Admit returns, and the key is a string of its own.
	defer bodybuf.Free(body)
	if err != nil {
		switch {
		case errors.Is(err, errTooLarge):
			return OutcomeTooLarge, "", tooLarge(h.MaxBody)
		case errors.Is(err, budget.ErrShare):
			w.Header().Set("Retry-After", retryAfterSeconds)
			return OutcomeUnavailable, "", refuse(http.StatusServiceUnavailable,
				"this client address is sending as many webhook bytes at once as one address may (its share of max_memory); retry when they have arrived",
				fmt.Errorf("relay %s: client %s holds its share of max_memory (%d bytes) with bodies still arriving; retry later", h.Name, client, h.relay.memory.Limits().Share))
		case errors.Is(err, budget.ErrFull):
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

	bodyRead = true

	if h.verifier != nil {
		if err := h.verifier.Verify(r, body, time.Now()); err != nil {
			return h.verifyRefused(w, err)
		}
	}
	if h.handshaker != nil {
		a, err := h.handshaker.Handshake(r, body)
		if err != nil {
			return h.refusedBy(w, h.handshaker.Scheme(), err)
		}
		if a != nil {
			return h.answer(w, r, a, true)
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

	traceParent, traceState := tracectx.FromRequest(r)
	if span := trace.SpanFromContext(r.Context()); span.SpanContext().IsValid() && !span.SpanContext().IsRemote() {
		// Caddy's tracing handler ran: the attempts' spans go to its
		// provider (delivery/tracing.go says why this way)
		h.relay.useTracerProvider(span.TracerProvider())
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
			TraceParent:  traceParent,
			TraceState:   traceState,
		},
	}
	// No destination takes it: the key is marked seen (a re-delivery is a
	// duplicate) and nothing is stored.
	ignored := !h.route(entry, r, rawQuery, body, key)
	if ignored {
		entry.Body, entry.Request, entry.MarkerOnly = nil, queue.RequestMeta{}, true
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
		if errors.Is(err, queue.ErrStoreFull) {
			return OutcomeUnavailable, key, refuse(http.StatusServiceUnavailable, "store full (max_stored); retry later",
				fmt.Errorf("relay %s: store full (max_stored %d bytes of queued payloads and dead letters); retry later",
					h.Name, h.MaxStored))
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
	if ignored {
		_, _ = w.Write(respIgnored)
		return OutcomeIgnored, key, nil
	}
	h.relay.Wake()
	_, _ = w.Write(respAccepted)
	return OutcomeAccepted, key, nil
}

var errTooLarge = errors.New("body too large")

// route evaluates the destinations' filters on a payload and sets where e
// goes: Destination when one destination takes it, Destinations (one
// delivery each) when several do. It reports whether any takes it.
// Without filters every destination takes it, at no cost.
func (h *Handler) route(e *queue.Entry, r *http.Request, rawQuery string, body []byte, key string) bool {
	if len(h.dests) == 1 && h.dests[0].filter == nil {
		e.Destination = h.dests[0].name
		return true
	}
	var in *filter.Input
	var taken []string
	for _, d := range h.dests {
		if d.filter != nil && in == nil {
			in = filterInput(r, rawQuery, body, key, h.parseBody, h.parseQuery)
		}
		if h.takes(d, in) {
			taken = append(taken, d.name)
		}
	}
	switch len(taken) {
	case 0:
		return false
	case 1:
		e.Destination = taken[0]
	default:
		e.Destinations = taken
	}
	return true
}

// verifyRefused answers a request the verify scheme refused (refusedBy).
func (h *Handler) verifyRefused(w http.ResponseWriter, err error) (outcome, key string, _ error) {
	return h.refusedBy(w, h.verifier.Scheme(), err)
}

// refusedBy answers a request the verify scheme called scheme refused: 401
// for a failed check, or the status the scheme gives: 400 for a malformed
// handshake, 403 for one with a wrong verify token (counted as
// unauthorized), 503 with Retry-After when it cannot get the keys to check
// with (the sender retries).
func (h *Handler) refusedBy(w http.ResponseWriter, scheme string, err error) (outcome, key string, _ error) {
	status := http.StatusUnauthorized
	if ve, ok := errors.AsType[*verify.Error](err); ok {
		status = ve.Status()
	}
	err = fmt.Errorf("verify %s: %v", scheme, err)
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return OutcomeUnauthorized, "", refuse(status, "", err)
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", retryAfterSeconds)
		return OutcomeUnavailable, "", refuse(status, "", err)
	case http.StatusMethodNotAllowed:
		w.Header().Set("Allow", h.allowedMethods())
		return OutcomeMethodNotAllowed, "", refuse(status, "", err)
	}
	return OutcomeBadRequest, "", refuse(status, "", err)
}

// closeUnread makes the answer to a request refused before its body was
// read whole (all of it but a Content-Length of 0) go out at once, and
// closes the connection after it. Over HTTP/1 that connection cannot
// serve another request anyway, and without this net/http would first
// read up to 256 KiB of what is left (Caddy wraps the body, so net/http
// cannot see how much that is), holding the answer, a 503 with its
// Retry-After, until a slow sender sent it or body_timeout passed. HTTP/2
// resets the stream instead; its connection goes on.
func closeUnread(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 1 || r.ContentLength == 0 {
		return
	}
	w.Header().Set("Connection", "close")
	// nothing more is read: the drain net/http does after the answer
	// fails at once instead of waiting on the sender
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}

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
// the bytes it took from the memory budget under client's key, for the
// caller to give back, and to bodybuf.Free once nothing uses the body any
// more. It fails with budget.ErrShare or budget.ErrFull when the budget
// refuses.
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
// budget is taken as it grows. Either way a body of limit bytes takes limit
// bytes (a client's share may be exactly max_body): the end is seen by
// reading one byte more into a probe outside the buffer.
func readBody(r *http.Request, limit int64, mem *budget.Budget, client string) (body []byte, taken int64, err error) {
	want := limit // the bytes the buffer may grow to
	if r.ContentLength >= 0 {
		want = min(r.ContentLength, limit)
		if err := mem.Take(client, want); err != nil {
			return nil, 0, err
		}
		taken = want
	}
	buf := []byte{}
	defer func() {
		if err != nil {
			bodybuf.Free(buf)
		}
	}()
	for {
		if len(buf) == cap(buf) && int64(len(buf)) >= want {
			// all that was announced (or the limit) is here: the body
			// must end now
			var probe [1]byte
			n, err := io.ReadFull(r.Body, probe[:])
			if err == io.EOF {
				return buf, taken, nil
			}
			if err != nil {
				return nil, taken, err
			}
			if int64(len(buf)) >= limit {
				return nil, taken, errTooLarge
			}
			// more than was announced: go on doubling to the limit
			want = limit
			grown, err := grow(buf, doubled(buf, want), mem, client, &taken)
			if err != nil {
				return nil, taken, err
			}
			buf = append(grown, probe[:n]...)
			continue
		}
		if len(buf) == cap(buf) {
			size := want // the announced length, at once
			if cap(buf) > 0 || r.ContentLength < 0 {
				size = doubled(buf, want)
			}
			grown, err := grow(buf, size, mem, client, &taken)
			if err != nil {
				return nil, taken, err
			}
			buf = grown
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF && r.ContentLength >= 0 && int64(len(buf)) < r.ContentLength {
			// a body shorter than announced (HTTP/3, or a handler before
			// this one that replaced it) is cut, as net/http's own
			// HTTP/1 and HTTP/2 readers say
			return nil, taken, io.ErrUnexpectedEOF
		}
		if err == io.EOF {
			return buf, taken, nil
		}
		if err != nil {
			return nil, taken, err
		}
	}
}

// firstChunk is the first buffer of a body whose length is not known.
const firstChunk = 64 << 10

// doubled is the size buf grows to: twice its capacity, from firstChunk,
// up to want.
func doubled(buf []byte, want int64) int64 {
	return min(max(2*int64(cap(buf)), firstChunk), want)
}

// grow moves buf into a buffer of size bytes, taking from the budget what
// *taken does not cover yet, and frees buf. A large buffer is mapped
// outside the heap (bodybuf); the first chunk of a body without a length
// stays on the heap, since a mapping would cost every small chunked body
// two system calls. On an error buf is left as it was.
func grow(buf []byte, size int64, mem *budget.Budget, client string, taken *int64) ([]byte, error) {
	if more := size - *taken; more > 0 {
		if err := mem.Take(client, more); err != nil {
			return nil, err
		}
		*taken += more
	}
	var grown []byte
	if size <= firstChunk {
		grown = make([]byte, len(buf), size)
	} else {
		grown = bodybuf.Alloc(int(size))[:len(buf)]
	}
	copy(grown, buf)
	bodybuf.Free(buf)
	return grown, nil
}

// clientKey is the key of the client's share of max_memory: Caddy's
// client IP (the address after trusted_proxies), or the connection's
// address where it is not set. An IPv6 client counts by its /64, the
// block one host usually holds, so that a host cannot take a share per
// address it makes up.
func clientKey(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if ip == "" {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		ip = host
	}
	addr, err := netip.ParseAddr(ip)
	switch {
	case err != nil:
		return ip
	case addr.Is4():
		return ip
	case addr.Is4In6():
		return addr.Unmap().String()
	}
	p, _ := addr.WithZone("").Prefix(64)
	return p.String()
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
