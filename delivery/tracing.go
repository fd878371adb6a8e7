package delivery

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookrelay/caddy-webhook-relay/internal/tracectx"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// AttemptSpanName names the span recorded for each delivery attempt.
const AttemptSpanName = "webhook_relay attempt"

// tracerName is the instrumentation scope of the attempt spans.
const tracerName = "github.com/hookrelay/caddy-webhook-relay/delivery"

// Caddy's tracing handler keeps its tracer provider to itself (a package
// variable of modules/caddyhttp/tracing, never set as OpenTelemetry's
// global one). The span it starts for a request knows its provider,
// though: the ack path hands that over (UseTracerProvider), and the
// attempts record their spans through the newest one seen. Until a traced
// request came (payloads queued before a restart), and without Caddy's
// tracing, OpenTelemetry's global provider is used, a no-op unless the
// program set one.
type tracerHolder struct{ tp trace.TracerProvider }

// UseTracerProvider makes the attempts record their spans through tp,
// the provider of the span Caddy's tracing handler started for a request.
// Cheap when tp is the one already in use: called on every traced request.
func (e *Engine) UseTracerProvider(tp trace.TracerProvider) {
	if cur := e.tracer.Load(); cur != nil && cur.tp == tp {
		return
	}
	e.tracer.Store(&tracerHolder{tp})
}

func (e *Engine) tracerProvider() trace.TracerProvider {
	if cur := e.tracer.Load(); cur != nil {
		return cur.tp
	}
	return otel.GetTracerProvider()
}

// attemptSpan starts the span of one attempt, a child of the payload's
// kept trace context (a remote parent), and returns the context to send:
// the span's own when it records, else one of the same trace with a new
// span id. Without a kept trace context it starts nothing and sc is not
// valid. end closes the span with the attempt's outcome.
func attemptSpan(ctx context.Context, tp trace.TracerProvider, relay, dest string, e *queue.Entry, attemptNo int) (sc trace.SpanContext, end func(o outcome)) {
	parent := tracectx.Parse(e.Request.TraceParent, e.Request.TraceState)
	if !parent.IsValid() {
		return parent, func(outcome) {}
	}
	_, span := tp.Tracer(tracerName).Start(trace.ContextWithRemoteSpanContext(ctx, parent), AttemptSpanName,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("webhook_relay.relay", relay),
			attribute.String("webhook_relay.destination", dest),
			attribute.String("webhook_relay.id", e.ID),
			attribute.Int("webhook_relay.attempt", attemptNo),
		))
	sc = span.SpanContext()
	if !sc.IsValid() || sc.SpanID() == parent.SpanID() {
		// a no-op tracer hands back the parent's context
		sc = tracectx.Child(parent)
	}
	return sc, func(o outcome) {
		if o.status != 0 {
			span.SetAttributes(attribute.Int("http.response.status_code", o.status))
		}
		if o.verdict != delivered {
			span.SetAttributes(attribute.String("webhook_relay.error", o.reason))
			span.SetStatus(codes.Error, o.reason)
		}
		span.End()
	}
}

// tracedHeader is whether a kept header is trace context, which an
// attempt sets itself.
func tracedHeader(name string) bool {
	return name == "Traceparent" || name == "Tracestate"
}
