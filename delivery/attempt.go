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
	"time"

	"github.com/hookrelay/caddy-webhook-relay/dedupe"
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
}

// buildRequest makes the forwarded request: the body byte-identical, the
// upstream URL plus the stored (auth-free) query, and the headers DESIGN.md
// lists.
func buildRequest(ctx context.Context, s *Settings, e *dedupe.Entry, attempt int) (*http.Request, error) {
	u := *s.Upstream
	if q := e.Request.RawQuery; q != "" {
		if u.RawQuery == "" {
			u.RawQuery = q
		} else {
			u.RawQuery += "&" + q
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(e.Body))
	if err != nil {
		return nil, err
	}
	for field, values := range s.HeaderUp {
		req.Header[field] = values
	}
	if e.Request.ContentType != "" {
		req.Header.Set("Content-Type", e.Request.ContentType)
	}
	// An explicit empty User-Agent keeps Go from adding its own.
	req.Header["User-Agent"] = []string{e.Request.UserAgent}
	if e.Request.ForwardedFor != "" {
		req.Header.Set("X-Forwarded-For", e.Request.ForwardedFor)
	}
	req.Header.Set("Idempotency-Key", e.Key)
	req.Header.Set(AttemptHeader, strconv.Itoa(attempt))
	return req, nil
}

// attempt sends e to the upstream once and classifies the answer.
func attempt(ctx context.Context, client *http.Client, s *Settings, e *dedupe.Entry, attemptNo int, now time.Time) outcome {
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	req, err := buildRequest(ctx, s, e, attemptNo)
	if err != nil {
		return outcome{verdict: dead, reason: "building the upstream request: " + err.Error()}
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return outcome{verdict: retry, reason: fmt.Sprintf("no answer within timeout %s", s.Timeout)}
		}
		return outcome{verdict: retry, reason: describeTransportError(err)}
	}
	// Drain a little so the connection can be reused; the upstream's answer
	// itself is of no use to us.
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()

	return classify(resp.StatusCode, resp.Header, now)
}

// classify maps an upstream status to what happens next.
func classify(status int, h http.Header, now time.Time) outcome {
	o := outcome{status: status, reason: fmt.Sprintf("upstream answered %d %s", status, http.StatusText(status))}
	switch {
	case status >= 200 && status < 300:
		o.verdict = delivered
		o.reason = ""
	case status == http.StatusRequestTimeout, status == http.StatusTooEarly,
		status == http.StatusTooManyRequests, status >= 500:
		o.verdict = retry
		o.retryAfter = retryAfter(h, now)
	default:
		// Other 4xx (and redirects, which are not followed): sending the
		// same payload again will get the same answer.
		o.verdict = dead
	}
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
