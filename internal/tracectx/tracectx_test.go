package tracectx

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

const good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func request(headers ...string) *http.Request {
	r, _ := http.NewRequest(http.MethodPost, "http://relay/hook", nil)
	for i := 0; i < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	return r
}

func TestTraceParentChecked(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"well formed", good, good},
		{"not sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
		{"a later version with more fields", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", good},
		{"upper-case hex", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ""},
		{"trace id all zero", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{"span id all zero", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", ""},
		{"version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"short trace id", "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01", ""},
		{"version 00 with more fields", good + "-x", ""},
		{"not hex", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", ""},
		{"a script", "<script>alert(1)</script>", ""},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := FromRequest(request("traceparent", tc.in))
			if got != tc.want {
				t.Errorf("FromRequest(traceparent %q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestTraceParentRepeatedDropped(t *testing.T) {
	other := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	if got, _ := FromRequest(request("traceparent", good, "traceparent", other)); got != "" {
		t.Errorf("two traceparent headers: kept %q, want none", got)
	}
}

func TestTraceStateKeptBounded(t *testing.T) {
	if _, got := FromRequest(request("traceparent", good, "tracestate", "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7")); got != "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7" {
		t.Errorf("tracestate = %q", got)
	}
	// no traceparent: no tracestate either
	if p, s := FromRequest(request("tracestate", "congo=t61rcWkgMzE")); p != "" || s != "" {
		t.Errorf("tracestate alone kept: %q, %q", p, s)
	}
	// malformed members make the whole tracestate go, not the traceparent
	if p, s := FromRequest(request("traceparent", good, "tracestate", "Not A Member")); p != good || s != "" {
		t.Errorf("malformed tracestate: %q, %q; want %q and none", p, s, good)
	}
	// 32 members of 20 bytes: well formed, longer than MaxState
	var members []string
	for i := range 32 {
		members = append(members, "k"+strings.Repeat(string(rune('a'+i%26)), 8)+string(rune('a'+i/26))+"="+strings.Repeat("v", 9))
	}
	long := strings.Join(members, ",")
	if p, s := FromRequest(request("traceparent", good, "tracestate", long)); p != good || s != "" {
		t.Errorf("tracestate of %d bytes: %q, %d bytes; want %q and none", len(long), p, len(s), good)
	}
}

func TestFromCaddysSpan(t *testing.T) {
	// a local span in the context (what Caddy's tracing handler starts)
	// wins over the headers
	sc := Parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "a=b")
	local := trace.NewSpanContext(trace.SpanContextConfig{TraceID: sc.TraceID(), SpanID: sc.SpanID(), TraceFlags: sc.TraceFlags(), TraceState: sc.TraceState()})
	r := request("traceparent", good)
	r = r.WithContext(trace.ContextWithSpanContext(context.Background(), local))
	if p, s := FromRequest(r); p != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" || s != "a=b" {
		t.Errorf("FromRequest with a span = %q, %q", p, s)
	}
}

func TestChildNewSpanSameTrace(t *testing.T) {
	parent := Parse(good, "congo=t61rcWkgMzE")
	seen := map[trace.SpanID]bool{parent.SpanID(): true}
	for range 100 {
		c := Child(parent)
		if c.TraceID() != parent.TraceID() || c.TraceFlags() != parent.TraceFlags() || c.TraceState().String() != "congo=t61rcWkgMzE" {
			t.Fatalf("Child = %v, want trace %v, flags %v, its tracestate", c, parent.TraceID(), parent.TraceFlags())
		}
		if seen[c.SpanID()] || !c.SpanID().IsValid() {
			t.Fatalf("Child span id %v: repeated or zero", c.SpanID())
		}
		seen[c.SpanID()] = true
	}
	if unsampled := Child(Parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "")); unsampled.IsSampled() {
		t.Error("Child of an unsampled parent is sampled")
	}
}
