package delivery

import (
	"net/http"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/internal/tracectx"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

const (
	keptParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	keptState  = "congo=t61rcWkgMzE"
)

// tracedAttempts makes n attempts of an entry with the kept trace context
// (and the sender's traceparent among its kept headers, as forward_headers
// would keep it) through tp, as the engine does, and returns the
// upstream's traceparent and tracestate headers of each.
func tracedAttempts(t *testing.T, tp trace.TracerProvider, n int) (parents, states [][]string) {
	up := testkit.NewUpstream(t, testkit.Always(http.StatusInternalServerError))
	s := settingsFor(t, up.URL+"/in")
	e := &queue.Entry{ID: "1", Key: "k", Body: []byte("{}"), Request: queue.RequestMeta{
		TraceParent: keptParent, TraceState: keptState,
		Headers: []queue.HeaderField{{Name: "Traceparent", Value: keptParent}, {Name: "Tracestate", Value: "evil=1"}},
	}}
	for i := 1; i <= n; i++ {
		sc, end := attemptSpan(t.Context(), tp, "hooks", "upstream", e, i)
		o, _ := attempt(t.Context(), http.DefaultClient, s, e, i, time.Now(), sc, newSentBodies(sentBodiesWait, nil))
		end(o)
		if o.status != http.StatusInternalServerError {
			t.Fatalf("attempt %d: %+v", i, o)
		}
	}
	for _, r := range up.Requests() {
		parents, states = append(parents, r.Header.Values("Traceparent")), append(states, r.Header.Values("Tracestate"))
	}
	return parents, states
}

// Without a tracer that records (Caddy's tracing off): every attempt sends
// one traceparent of the kept trace with a span id of its own, the kept
// flags and tracestate; never the sender's.
func TestTraceAttemptsNewSpanSameTrace(t *testing.T) {
	parents, states := tracedAttempts(t, noop.NewTracerProvider(), 3)
	kept := tracectx.Parse(keptParent, keptState)
	seen := map[trace.SpanID]bool{kept.SpanID(): true}
	for i, p := range parents {
		if len(p) != 1 || len(states[i]) != 1 || states[i][0] != keptState {
			t.Fatalf("attempt %d sent traceparent %q, tracestate %q; want one each, tracestate %q", i+1, p, states[i], keptState)
		}
		sc := tracectx.Parse(p[0], "")
		if sc.TraceID() != kept.TraceID() || !sc.IsSampled() {
			t.Errorf("attempt %d: traceparent %q, want trace %v, sampled", i+1, p[0], kept.TraceID())
		}
		if seen[sc.SpanID()] {
			t.Errorf("attempt %d: span id %v already sent (or the sender's)", i+1, sc.SpanID())
		}
		seen[sc.SpanID()] = true
	}
	if len(parents) != 3 {
		t.Fatalf("upstream got %d requests, want 3", len(parents))
	}
}

// With a tracer provider that records: a span per attempt, child of the
// kept (remote) span, with the attempt's attributes; the traceparent sent
// carries that span's id.
func TestTraceAttemptSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	parents, _ := tracedAttempts(t, tp, 2)
	spans := rec.Ended()
	if len(spans) != 2 || len(parents) != 2 {
		t.Fatalf("%d spans, %d requests; want 2 of each", len(spans), len(parents))
	}
	kept := tracectx.Parse(keptParent, keptState)
	for i, sp := range spans {
		if sp.Name() != AttemptSpanName || sp.Parent().SpanID() != kept.SpanID() || !sp.Parent().IsRemote() ||
			sp.SpanContext().TraceID() != kept.TraceID() {
			t.Errorf("span %d: %q, parent %v (remote %v), trace %v", i, sp.Name(), sp.Parent().SpanID(), sp.Parent().IsRemote(), sp.SpanContext().TraceID())
		}
		if sent := tracectx.Parse(parents[i][0], ""); sent.SpanID() != sp.SpanContext().SpanID() {
			t.Errorf("attempt %d sent span id %v, its span is %v", i+1, sent.SpanID(), sp.SpanContext().SpanID())
		}
		attrs := map[string]string{}
		for _, kv := range sp.Attributes() {
			attrs[string(kv.Key)] = kv.Value.Emit()
		}
		want := map[string]string{"webhook_relay.relay": "hooks", "webhook_relay.destination": "upstream",
			"webhook_relay.attempt": string(rune('1' + i)), "http.response.status_code": "500",
			"webhook_relay.error": "upstream answered 500 Internal Server Error"}
		for k, v := range want {
			if attrs[k] != v {
				t.Errorf("span %d: %s = %q, want %q", i, k, attrs[k], v)
			}
		}
	}
}

// An entry without trace context sends none, even a kept one.
func TestTraceNoneKept(t *testing.T) {
	up := testkit.NewUpstream(t, testkit.Always(http.StatusOK))
	e := &queue.Entry{ID: "1", Key: "k", Request: queue.RequestMeta{Headers: []queue.HeaderField{{Name: "Traceparent", Value: "junk"}}}}
	sc, end := attemptSpan(t.Context(), noop.NewTracerProvider(), "hooks", "upstream", e, 1)
	o, _ := attempt(t.Context(), http.DefaultClient, settingsFor(t, up.URL), e, 1, time.Now(), sc, newSentBodies(sentBodiesWait, nil))
	end(o)
	if got := up.Next(t).Header.Values("Traceparent"); len(got) != 0 {
		t.Errorf("traceparent sent: %q", got)
	}
}
