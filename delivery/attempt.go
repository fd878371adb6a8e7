package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hookrelay/caddy-webhook-relay/internal/tracectx"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/verify"
)

// AttemptHeader carries the 1-based attempt number on forwarded requests.
const AttemptHeader = "X-Webhook-Relay-Attempt"

// verdict is what one delivery attempt means for the entry.
type verdict int

const (
	delivered verdict = iota
	retry
	dead
)

// outcome is the result of one attempt.
type outcome struct {
	verdict    verdict
	status     int           // upstream status, 0 without a response
	reason     string        // for people: why it failed
	retryAfter time.Duration // the upstream's Retry-After, if any
	// unreachable: no answer at all (refused, reset, timed out). With
	// neither a status nor this, the attempt was cut short on our side
	// (stopping, a panic) and says nothing of the upstream.
	unreachable bool
}

// buildRequest makes the forwarded request: the body byte-identical, the
// upstream URL plus the stored (auth-free) query, and the headers the README
// lists under Delivery. It is put together field by field rather than through
// http.NewRequest, which would print the URL only to parse it again.
//
// The request's bodies are opened through sent, which tells when the
// transport has closed each (see sentBodies).
func buildRequest(ctx context.Context, s *Settings, e *queue.Entry, attempt int, now time.Time, sent *sentBodies) *http.Request {
	u := *s.Upstream
	// A "#" has no place in a request target; what follows it was never
	// part of the query (http.NewRequest would have cut it off as well).
	if q, _, _ := strings.Cut(e.Request.RawQuery, "#"); q != "" {
		if u.RawQuery == "" {
			u.RawQuery = q
		} else if q = withoutOwnParams(q, u.RawQuery); q != "" {
			u.RawQuery += "&" + q
		}
	}
	body := e.Body
	h := make(http.Header, len(e.Request.Headers)+len(s.HeaderUp)+9)
	// the sender's own headers first: header_up and the relay's own win
	for _, f := range e.Request.Headers {
		if tracedHeader(f.Name) {
			continue // the attempt sends its own (attempt)
		}
		h[f.Name] = append(h[f.Name], f.Value)
	}
	for field, values := range s.HeaderUp {
		h[field] = values
	}
	// one backing array for the values we set, instead of one per header
	vals := [...]string{e.Request.ContentType, e.Request.UserAgent, e.Request.ForwardedFor, e.Key, strconv.Itoa(attempt)}
	if vals[0] != "" {
		h["Content-Type"] = vals[0:1:1]
	}
	// An explicit empty User-Agent keeps Go from adding its own.
	h["User-Agent"] = vals[1:2:2]
	if vals[2] != "" {
		h["X-Forwarded-For"] = vals[2:3:3]
	}
	h["Idempotency-Key"] = vals[3:4:4]
	h[AttemptHeader] = vals[4:5:5]
	if s.SignKey != nil {
		// Standard Webhooks, signed at the attempt's time: the app's own
		// tolerance holds however late the delivery
		h["Webhook-Id"] = vals[3:4:4]
		h["Webhook-Timestamp"] = []string{strconv.FormatInt(now.Unix(), 10)}
		h["Webhook-Signature"] = []string{verify.SignStandard(s.SignKey, e.Key, now, body)}
	}
	req := &http.Request{
		Method:        http.MethodPost,
		URL:           &u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Host:          strings.TrimSuffix(u.Host, ":"), // as http.NewRequest: an empty port is dropped
		Body:          sent.open(body),
		ContentLength: int64(len(body)),
		// lets the transport send it again on a fresh connection when a
		// kept-alive one turns out to be closed
		GetBody: func() (io.ReadCloser, error) { return sent.open(body), nil },
	}
	if len(body) == 0 {
		req.Body.Close()
		req.Body, req.GetBody = http.NoBody, func() (io.ReadCloser, error) { return http.NoBody, nil }
	}
	return req.WithContext(ctx)
}

// withoutOwnParams drops from the incoming query every parameter named
// like one of the upstream URL's own: in a framework where the last value
// wins, a sender could otherwise override the upstream's (a tenant, a
// token). Names compare as frameworks read them: unescaped, without
// case, and up to a "[" (PHP's and Rails' a[]=, a[x]=); ";" separates
// parameters too (some frameworks split on it). The rest is kept byte for
// byte.
func withoutOwnParams(incoming, own string) string {
	var owned []string
	for _, part := range strings.FieldsFunc(own, isQuerySep) {
		owned = append(owned, paramName(part))
	}
	var b strings.Builder
	dropped := false
	for _, part := range strings.Split(incoming, "&") {
		clash := false
		for _, sub := range strings.Split(part, ";") {
			name := paramName(sub)
			for _, o := range owned {
				clash = clash || (name != "" && strings.EqualFold(name, o))
			}
		}
		if clash {
			dropped = true
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	if !dropped {
		return incoming
	}
	return b.String()
}

func isQuerySep(r rune) bool { return r == '&' || r == ';' }

// paramName is the name of a "name=value" query part as frameworks read it.
func paramName(part string) string {
	name, _, _ := strings.Cut(part, "=")
	if n, err := url.QueryUnescape(name); err == nil {
		name = n
	}
	name, _, _ = strings.Cut(name, "[")
	return strings.TrimSpace(name)
}

// attempt sends e to the upstream once and classifies the answer. sent
// opens the readers of e.Body the transport gets and frees the body once
// the transport is done with it (newSentBodies): the transport may go on
// writing a request's body after the answer came (an upstream that answers
// before reading it all), and closes it when it stops. attempt waits for
// that up to sent's wait; past it, late is set and the transport's last
// Close frees the body instead. Either way it is freed exactly once, after
// a panic in the transport too.
//
// A valid sc is the attempt's trace context, sent as its traceparent and
// tracestate.
func attempt(ctx context.Context, client *http.Client, s *Settings, e *queue.Entry, attemptNo int, now time.Time, sc trace.SpanContext, sent *sentBodies) (o outcome, late bool) {
	returned := false
	// deferred, so that a panic does not leave the body to no one
	defer func() { late = !sent.finish(!returned) }()
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	// before finish: a write still going on stops with the request's context
	defer cancel()
	req := buildRequest(ctx, s, e, attemptNo, now, sent)
	if sc.IsValid() {
		tracectx.Inject(req.Header, sc)
	}
	o = roundTrip(client, s, req, now)
	returned = true
	return o, false
}

// roundTrip sends req and classifies the answer.
func roundTrip(client *http.Client, s *Settings, req *http.Request, now time.Time) outcome {
	resp, err := client.Do(req)
	if err != nil {
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return outcome{verdict: retry, unreachable: true, reason: fmt.Sprintf("no answer within timeout %s", s.Timeout)}
		case errors.Is(err, context.Canceled):
			// the engine is stopping: says nothing of the upstream
			return outcome{verdict: retry, reason: describeTransportError(err)}
		}
		return outcome{verdict: retry, unreachable: true, reason: describeTransportError(err)}
	}
	// Drain a little so the connection can be reused; the upstream's answer
	// itself is of no use to us.
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()

	return classify(resp.StatusCode, resp.Header, now)
}

// sentBodiesWait is how long attempt waits, unless told otherwise
// (Config.BodyWait), for the transport to close a request's bodies after
// its context ended: normally it closes them at once.
const sentBodiesWait = 10 * time.Second

// sentBodies counts the readers of one body that the transport has not
// closed, and frees the body once it is done with them: finish (the end of
// the attempt) frees it if every reader is closed within the wait; if not,
// the last reader's Close does. The transport may hold a body for as long
// as it likes (a stuck connection), so the body is never simply kept: that
// would leak it for the life of the process, each time.
//
// One mutex orders finish and the Closes, so the body is freed exactly
// once, and only with no reader open: a closed sentBody has finished its
// last Read and reads nothing more.
type sentBodies struct {
	wait time.Duration
	free func() // frees the body and gives back its budget; nil: nothing to do

	mu      sync.Mutex
	readers int         // open, not closed yet
	opened  []*sentBody // all of them, for a panic (finish)
	state   sentState
	idle    chan struct{} // finish waits on it: closed when readers drops to 0
}

// sentState is where a sentBodies is in its life.
type sentState int

const (
	sending  sentState = iota // the attempt runs: it frees the body in finish
	orphaned                  // finish gave up waiting: the last Close frees it
	freed                     // gone: no reader may read it again
)

// newSentBodies returns the readers' bookkeeping for a body that free
// frees, waiting up to wait in finish.
func newSentBodies(wait time.Duration, free func()) *sentBodies {
	return &sentBodies{wait: wait, free: free}
}

// open returns a reader of body that the transport closes when done. Once
// the body is freed (a GetBody called late), the reader reads nothing.
func (s *sentBodies) open(body []byte) io.ReadCloser {
	b := &sentBody{done: s.closed}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == freed {
		b.closed = true // its Close calls no done
		return b
	}
	s.readers++
	s.opened = append(s.opened, b)
	b.r.Reset(body)
	return b
}

// closed is a reader's Close: the last one frees the body if the attempt
// no longer waits for it.
func (s *sentBodies) closed() {
	s.mu.Lock()
	s.readers--
	last := s.readers == 0
	if last && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	free := last && s.state == orphaned
	if free {
		s.state = freed
	}
	s.mu.Unlock()
	if free {
		s.release()
	}
}

// finish ends the attempt's part: it waits up to s.wait for every reader
// to be closed, then frees the body and reports true; or, still with a
// reader open, leaves the free to the last Close and reports false.
//
// After a panic (in the transport, say) it closes the readers itself
// first: nothing else will (net/http's Client does not close a request's
// body when its transport panics), and the budget would stay taken for
// good. That is safe whoever holds them: Close waits for a Read in
// progress, and none reads the body after it.
func (s *sentBodies) finish(panicked bool) bool {
	if panicked {
		s.mu.Lock()
		opened := s.opened
		s.mu.Unlock()
		for _, b := range opened {
			b.Close()
		}
	}
	s.mu.Lock()
	var idle chan struct{}
	if s.readers > 0 {
		s.idle = make(chan struct{})
		idle = s.idle
	}
	s.mu.Unlock()
	if idle != nil {
		t := time.NewTimer(s.wait)
		select {
		case <-idle:
		case <-t.C:
		}
		t.Stop()
	}
	s.mu.Lock()
	// decided here, under the lock, whatever the wait saw: a Close that
	// came since counts; one that comes after finds the state orphaned
	done := s.readers == 0
	if done {
		s.state = freed
	} else {
		s.state = orphaned
	}
	s.mu.Unlock()
	if done {
		s.release()
	}
	return done
}

func (s *sentBodies) release() {
	if s.free != nil {
		s.free()
	}
}

// errBodyClosed is what a read of a closed sentBody returns.
var errBodyClosed = errors.New("request body closed")

// sentBody is the reader of a body the transport sends. Close waits for a
// Read in progress and makes every later one fail, so that once it is
// closed nothing reads the body again: HTTP/2's writer may call Read after
// the transport closed the body from another goroutine (an upstream that
// answers before reading it all), and a freed bodybuf must never be read.
type sentBody struct {
	mu     sync.Mutex
	r      bytes.Reader
	closed bool
	done   func()
}

func (b *sentBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errBodyClosed
	}
	return b.r.Read(p)
}

func (b *sentBody) Close() error {
	b.mu.Lock()
	first := !b.closed
	b.closed = true
	b.r.Reset(nil)
	b.mu.Unlock()
	if first {
		b.done()
	}
	return nil
}

// classify maps an upstream status to what happens next.
func classify(status int, h http.Header, now time.Time) outcome {
	o := outcome{status: status}
	switch {
	case status >= 200 && status < 300:
		o.verdict = delivered
		return o
	case status == http.StatusRequestTimeout, status == http.StatusTooEarly,
		status == http.StatusTooManyRequests, status >= 500:
		o.verdict = retry
		o.retryAfter = retryAfter(h, now)
	default:
		// Other 4xx (and redirects, which are not followed): sending the
		// same payload again will get the same answer.
		o.verdict = dead
	}
	o.reason = fmt.Sprintf("upstream answered %d %s", status, http.StatusText(status))
	return o
}

// describeTransportError strips the request URL from a client error: it
// names the upstream, which the operator knows, and the query, which may
// carry the sender's parameters.
func describeTransportError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return "upstream unreachable: " + ue.Err.Error()
	}
	return "upstream unreachable: " + err.Error()
}
