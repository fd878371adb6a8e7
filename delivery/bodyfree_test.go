package delivery

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// An HTTPS (HTTP/2) upstream that answers 503 before reading the body: the
// transport closes the body from another goroutine while its writer may
// still call Read. Once every reader is closed the body is freed (by the
// attempt, or by the transport's last Close), so a Read after that would
// read unmapped memory and crash the process: the
// test dies instead of failing without the closed-body guard in sentBody.
func TestAttemptNeverReadsAFreedBody(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	s := settingsFor(t, srv.URL+"/in")
	for range 300 {
		body := bodybuf.Alloc(2 << 20)
		for j := 0; j < len(body); j += 4096 {
			body[j] = 'x'
		}
		sent := newSentBodies(sentBodiesWait, func() { bodybuf.Free(body) })
		o, _ := attempt(t.Context(), srv.Client(), s, &queue.Entry{ID: "1", Key: "k", Body: body}, 1, time.Now(), trace.SpanContext{}, sent)
		if o.status != http.StatusServiceUnavailable {
			t.Fatalf("attempt: status %d (%s), want 503", o.status, o.reason)
		}
	}
	// the transport's writers of the last attempts run on their own
	// goroutines: give them the moment they would need to touch a body
	time.Sleep(100 * time.Millisecond)
}
