package delivery

import (
	"io"
	"net/http"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// lateTransport answers at once and reads the request's body afterwards,
// in a goroutine of its own, closing it when done: what an http.RoundTripper
// may do (net/http's does, writing a body the upstream answered before
// reading).
type lateTransport struct {
	read chan int64 // what it read of a body, just before it closed it (buffered)
}

func (l *lateTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	go func() {
		time.Sleep(50 * time.Millisecond)
		n, _ := io.Copy(io.Discard, r.Body)
		l.read <- n // before Close: attempt may return the moment it closes
		r.Body.Close()
	}()
	return &http.Response{StatusCode: http.StatusServiceUnavailable, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

// attempt returns only once the transport has closed the request's body,
// so that the engine may unmap the body's buffer (bodybuf) right after:
// unmapped under the transport's reader, the process would crash.
func TestAttemptReturnsOnceTheBodyIsClosed(t *testing.T) {
	lt := &lateTransport{read: make(chan int64, 1)}
	client := &http.Client{Transport: lt}
	s := settingsFor(t, "http://127.0.0.1:1/in")
	body := bodybuf.Alloc(1 << 20)
	defer bodybuf.Free(body)
	e := &queue.Entry{ID: "1", Key: "k", Body: body}
	o, late := attempt(t.Context(), client, s, e, 1, time.Now(), trace.SpanContext{}, newSentBodies(sentBodiesWait, nil))
	if o.status != http.StatusServiceUnavailable || late {
		t.Fatalf("attempt: %+v, late %v; want the 503, and the body given back", o, late)
	}
	select {
	case n := <-lt.read:
		if n != int64(len(body)) {
			t.Errorf("the transport read %d bytes of %d", n, len(body))
		}
	default:
		t.Fatal("attempt returned while the transport still read the request's body")
	}
}
