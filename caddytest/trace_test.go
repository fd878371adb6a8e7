package caddytest

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

const (
	senderTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	senderSpan   = "00f067aa0ba902b7"
	senderParent = "00-" + senderTrace + "-" + senderSpan + "-01"
	senderState  = "congo=t61rcWkgMzE"
)

// traceparentOf splits a traceparent the upstream got into its trace id,
// span id and flags; it fails the test unless there is exactly one.
func traceparentOf(t *testing.T, h *hit) (traceID, spanID, flags string) {
	t.Helper()
	values := h.Header.Values("Traceparent")
	if len(values) != 1 {
		t.Fatalf("attempt %d: traceparent %q, want exactly one", h.Attempt, values)
	}
	parts := strings.Split(values[0], "-")
	if len(parts) != 4 || parts[0] != "00" {
		t.Fatalf("attempt %d: traceparent %q is not a version 00 traceparent", h.Attempt, values[0])
	}
	return parts[1], parts[2], parts[3]
}

// TestTraceContextContinued: a request with a traceparent (no tracing in
// Caddy), delivered on the second attempt: each attempt sends one
// traceparent of the sender's trace with a span id of its own, sampled as
// received, and the sender's tracestate; the sender's own traceparent,
// though forward_headers keeps it, is not sent as well.
func TestTraceContextContinued(t *testing.T) {
	up := newUpstream(t, sequence(500, 200))
	startCaddy(t, relayBlock(t, up.URL, "forward_headers Traceparent Tracestate"))

	body := payload(t)
	mustAccept(t, relayURL("/in", ""), body, "Traceparent: "+senderParent, "Tracestate: "+senderState)
	hits := up.waitDelivered(t, body)
	if len(hits) != 2 {
		t.Fatalf("%d requests for the payload, want 2 (500, 200):\n%s", len(hits), describe(hits))
	}
	spans := map[string]bool{senderSpan: true}
	for _, h := range hits {
		traceID, spanID, flags := traceparentOf(t, h)
		if traceID != senderTrace || flags != "01" {
			t.Errorf("attempt %d: trace %s, flags %s; want the sender's, %s and 01", h.Attempt, traceID, flags, senderTrace)
		}
		if spans[spanID] {
			t.Errorf("attempt %d: span id %s is the sender's or an earlier attempt's", h.Attempt, spanID)
		}
		spans[spanID] = true
		if got := h.Header.Values("Tracestate"); len(got) != 1 || got[0] != senderState {
			t.Errorf("attempt %d: tracestate %q, want %q", h.Attempt, got, senderState)
		}
	}
}

// TestTraceMalformedNotForwarded: a traceparent that is not one is
// neither kept nor sent, even with forward_headers naming it.
func TestTraceMalformedNotForwarded(t *testing.T) {
	up := newUpstream(t, always(200))
	startCaddy(t, relayBlock(t, up.URL, "forward_headers Traceparent Tracestate"))

	body := payload(t)
	mustAccept(t, relayURL("/in", ""), body, "Traceparent: 00-"+senderTrace+"-zz-01", "Tracestate: "+senderState)
	hits := up.waitDelivered(t, body)
	if got := hits[0].Header.Values("Traceparent"); len(got) != 0 {
		t.Errorf("traceparent sent: %q", got)
	}
	if got := hits[0].Header.Values("Tracestate"); len(got) != 0 {
		t.Errorf("tracestate sent without a traceparent: %q", got)
	}
}

// otlpReceiver is an OTLP/HTTP trace receiver on 127.0.0.1: it decodes
// every ExportTraceServiceRequest and keeps the spans.
type otlpReceiver struct {
	url   string
	mu    sync.Mutex
	spans []*tracepb.Span
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	rc := new(otlpReceiver)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(rc.serve)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	rc.url = "http://" + ln.Addr().String()
	return rc
}

func (rc *otlpReceiver) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
		http.NotFound(w, r)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	var req collectortrace.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(raw, &req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			rc.spans = append(rc.spans, ss.GetSpans()...)
		}
	}
	rc.mu.Unlock()
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

// ofTrace is the spans received so far of the trace traceID (hex).
func (rc *otlpReceiver) ofTrace(traceID string) []*tracepb.Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range rc.spans {
		if hex.EncodeToString(s.GetTraceId()) == traceID {
			out = append(out, s)
		}
	}
	return out
}

// spanAttr is the value of a string or integer attribute of s, "" when s
// has none by that key.
func spanAttr(s *tracepb.Span, key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() != key {
			continue
		}
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			return v.StringValue
		case *commonpb.AnyValue_IntValue:
			return fmt.Sprint(v.IntValue)
		}
	}
	return ""
}

// TestTraceSpansThroughCaddysTracing: with Caddy's tracing directive in the
// site, Caddy's exporter (configured by the OTEL_* variables) sends the
// server span of the incoming request and the relay's span of each attempt
// in one trace: each attempt span a child of the server span, and the
// traceparent each attempt sent carries its span's id.
func TestTraceSpansThroughCaddysTracing(t *testing.T) {
	rc := newOTLPReceiver(t)
	// Caddy's tracing builds its exporter (autoexport) and batcher from
	// these when its first tracing handler is provisioned, i.e. when the
	// config below loads.
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rc.url)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")

	up := newUpstream(t, sequence(500, 200))
	cfg := relayBlock(t, up.URL, "")
	cfg = strings.Replace(cfg, "\twebhook_relay /in {", "\ttracing {\n\t\tspan relay_in\n\t}\n\twebhook_relay /in {", 1)
	tester := startCaddy(t, cfg)
	// Leave the config without tracing while the receiver still listens:
	// Caddy shuts its tracer provider down (and flushes) when the last
	// tracing handler goes, and the receiver closes after this.
	t.Cleanup(func() { reload(t, tester, relayBlock(t, up.URL, "")) })

	body := payload(t)
	mustAccept(t, relayURL("/in", ""), body, "Traceparent: "+senderParent)
	hits := up.waitDelivered(t, body)
	if len(hits) != 2 {
		t.Fatalf("%d requests for the payload, want 2 (500, 200):\n%s", len(hits), describe(hits))
	}

	var server *tracepb.Span
	var attempts []*tracepb.Span
	ok := testkit.Poll(waitTimeout, func() bool {
		server, attempts = nil, nil
		for _, s := range rc.ofTrace(senderTrace) {
			switch {
			case s.GetKind() == tracepb.Span_SPAN_KIND_SERVER:
				server = s
			case s.GetName() == "webhook_relay attempt":
				attempts = append(attempts, s)
			}
		}
		return server != nil && len(attempts) == 2
	})
	if !ok {
		t.Fatalf("receiver got, of trace %s: server span %v, %d attempt spans; want one and 2 (all spans: %d)",
			senderTrace, server != nil, len(attempts), len(rc.spans))
	}
	if got := hex.EncodeToString(server.GetParentSpanId()); got != senderSpan {
		t.Errorf("server span %q: parent %s, want the sender's %s", server.GetName(), got, senderSpan)
	}
	bySpan := map[string]*tracepb.Span{}
	for _, a := range attempts {
		if !bytes.Equal(a.GetParentSpanId(), server.GetSpanId()) {
			t.Errorf("attempt span %x: parent %x, want the server span %x", a.GetSpanId(), a.GetParentSpanId(), server.GetSpanId())
		}
		if a.GetKind() != tracepb.Span_SPAN_KIND_CLIENT {
			t.Errorf("attempt span %x: kind %v, want client", a.GetSpanId(), a.GetKind())
		}
		bySpan[hex.EncodeToString(a.GetSpanId())] = a
	}
	for _, h := range hits {
		traceID, spanID, _ := traceparentOf(t, h)
		a := bySpan[spanID]
		if traceID != senderTrace || a == nil {
			t.Errorf("attempt %d sent trace %s span %s: no attempt span of trace %s has that id", h.Attempt, traceID, spanID, senderTrace)
			continue
		}
		if got, want := spanAttr(a, "webhook_relay.attempt"), fmt.Sprint(h.Attempt); got != want {
			t.Errorf("span %s: attempt %s, want %s", spanID, got, want)
		}
		if got, want := spanAttr(a, "http.response.status_code"), fmt.Sprint(h.Status); got != want {
			t.Errorf("span %s: status %s, want %s", spanID, got, want)
		}
		if got := spanAttr(a, "webhook_relay.relay"); got != relayName(t) {
			t.Errorf("span %s: relay %q, want %q", spanID, got, relayName(t))
		}
	}
}
