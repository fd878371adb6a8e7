// Package tracectx reads, checks and continues W3C trace context
// (traceparent, tracestate): what the relay keeps of an incoming request's
// trace, and the traceparent each delivery attempt sends.
package tracectx

import (
	"context"
	"crypto/rand"
	"net/http"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// MaxState bounds the tracestate kept: the W3C recommendation's 512
// characters, which every member the spec asks to be propagated fits in.
// A longer one is dropped whole (the traceparent is kept).
const MaxState = 512

// w3c is the W3C Trace Context propagator: it parses and checks
// traceparent (version, lengths, lower-case hex, ids not all zero) and
// tracestate (at most 32 well-formed members).
var w3c propagation.TraceContext

// FromRequest is the trace context to keep for r: that of the span Caddy's
// tracing handler started for it (a local span in r's context), else the
// request's own traceparent and tracestate headers, checked. A malformed or
// repeated traceparent gives none: the headers are the sender's, and only
// what parses is kept, in its canonical form. It returns "", "" when there
// is none.
func FromRequest(r *http.Request) (parent, state string) {
	if sc := trace.SpanContextFromContext(r.Context()); sc.IsValid() && !sc.IsRemote() {
		return Format(sc)
	}
	if len(r.Header.Values("Traceparent")) != 1 {
		return "", "" // none, or ambiguous
	}
	return Format(trace.SpanContextFromContext(
		w3c.Extract(context.Background(), propagation.HeaderCarrier(r.Header))))
}

// Parse is the remote span context of a kept traceparent and tracestate;
// not valid (IsValid false) when parent is not a well-formed traceparent.
func Parse(parent, state string) trace.SpanContext {
	if parent == "" {
		return trace.SpanContext{}
	}
	c := propagation.MapCarrier{"traceparent": parent}
	if state != "" {
		c["tracestate"] = state
	}
	return trace.SpanContextFromContext(w3c.Extract(context.Background(), c))
}

// Format writes sc as a traceparent and tracestate: "", "" when sc is not
// valid; the tracestate is "" when longer than MaxState.
func Format(sc trace.SpanContext) (parent, state string) {
	if !sc.IsValid() {
		return "", ""
	}
	c := propagation.MapCarrier{}
	w3c.Inject(trace.ContextWithSpanContext(context.Background(), sc), c)
	parent, state = c["traceparent"], c["tracestate"]
	if len(state) > MaxState {
		state = ""
	}
	return parent, state
}

// Child is a span context of sc's trace with a new random span id, the
// same flags (sampled as received) and tracestate: what an attempt sends
// when no tracer records a span for it.
func Child(sc trace.SpanContext) trace.SpanContext {
	var id trace.SpanID
	for !id.IsValid() {
		rand.Read(id[:])
	}
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    sc.TraceID(),
		SpanID:     id,
		TraceFlags: sc.TraceFlags(),
		TraceState: sc.TraceState(),
	})
}

// Inject sets h's traceparent and tracestate to sc's, replacing any.
func Inject(h http.Header, sc trace.SpanContext) {
	h.Del("Traceparent")
	h.Del("Tracestate")
	parent, state := Format(sc)
	if parent == "" {
		return
	}
	h["Traceparent"] = []string{parent}
	if state != "" {
		h["Tracestate"] = []string{state}
	}
}
