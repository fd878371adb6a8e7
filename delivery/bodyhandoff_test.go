package delivery

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/bolt"
)

// holdingTransport answers 200 at once and holds each request's body open,
// closing it only once let is closed: a transport stuck on a connection
// (an HTTP/2 stream the upstream never drains, say). closed gets a value
// once its Close has returned.
type holdingTransport struct {
	let    chan struct{}
	closed chan struct{} // buffered
	panics bool          // panic instead of answering, the body still held
}

func newHoldingTransport() *holdingTransport {
	return &holdingTransport{let: make(chan struct{}), closed: make(chan struct{}, 16)}
}

func (h *holdingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	go func() {
		<-h.let
		r.Body.Close()
		h.closed <- struct{}{}
	}()
	if h.panics {
		panic("transport panic (test)")
	}
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

// mappedBody is a body of n bytes in a mapping of bodybuf, as the stores'
// ReadBody gives large ones, and the function that frees it, counting the
// frees.
func mappedBody(t *testing.T, n int) (body []byte, free func(), frees *atomic.Int32) {
	t.Helper()
	body = bodybuf.Alloc(n)
	if cap(body) < bodybuf.Threshold {
		testkit.Unavailable(t, "bodybuf made no mapping on this system (Linux's mmap is needed)")
	}
	frees = new(atomic.Int32)
	return body, func() { frees.Add(1); bodybuf.Free(body) }, frees
}

// A transport that holds the body past the wait gets it: the attempt
// returns (late) without freeing it, and the transport's Close frees it,
// once.
func TestAttemptLeavesALateBodyToTheTransport(t *testing.T) {
	before := bodybuf.Mapped()
	body, free, frees := mappedBody(t, 1<<20)
	ht := newHoldingTransport()
	sent := newSentBodies(20*time.Millisecond, free)
	o, late := attempt(t.Context(), &http.Client{Transport: ht}, settingsFor(t, "http://127.0.0.1:1/in"),
		&queue.Entry{ID: "1", Key: "k", Body: body}, 1, time.Now(), trace.SpanContext{}, sent)
	if o.status != http.StatusOK || !late {
		t.Fatalf("attempt: %+v, late %v; want the 200, late", o, late)
	}
	if n, mapped := frees.Load(), bodybuf.Mapped()-before; n != 0 || mapped != int64(len(body)) {
		t.Fatalf("after the attempt, with the transport still holding the body: %d frees, %d bytes mapped; want 0, %d", n, mapped, len(body))
	}

	close(ht.let)
	<-ht.closed
	if n, mapped := frees.Load(), bodybuf.Mapped()-before; n != 1 || mapped != 0 {
		t.Fatalf("after the transport closed the body: %d frees, %d bytes mapped; want 1, 0", n, mapped)
	}
	// a GetBody that comes now reads nothing of the freed body
	r := sent.open(body)
	if n, err := r.Read(make([]byte, 10)); n != 0 || !errors.Is(err, errBodyClosed) {
		t.Errorf("a reader opened after the free read %d bytes, %v", n, err)
	}
	r.Close()
	if n := frees.Load(); n != 1 {
		t.Errorf("%d frees", n)
	}
}

// A body the transport closes at once is freed by the attempt, before it
// returns.
func TestAttemptFreesABodyClosedInTime(t *testing.T) {
	before := bodybuf.Mapped()
	body, free, frees := mappedBody(t, 1<<20)
	ht := newHoldingTransport()
	close(ht.let)
	o, late := attempt(t.Context(), &http.Client{Transport: ht}, settingsFor(t, "http://127.0.0.1:1/in"),
		&queue.Entry{ID: "1", Key: "k", Body: body}, 1, time.Now(), trace.SpanContext{}, newSentBodies(sentBodiesWait, free))
	if o.status != http.StatusOK || late {
		t.Fatalf("attempt: %+v, late %v; want the 200, not late", o, late)
	}
	if n, mapped := frees.Load(), bodybuf.Mapped()-before; n != 1 || mapped != 0 {
		t.Fatalf("after the attempt: %d frees, %d bytes mapped; want 1, 0", n, mapped)
	}
	<-ht.closed
	if n := frees.Load(); n != 1 {
		t.Errorf("%d frees", n)
	}
}

// A panic in the transport with the body held: the transport will never
// close it, so the attempt closes the reader itself and frees the body,
// once; the reader reads nothing more.
func TestAttemptPanicFreesTheBody(t *testing.T) {
	before := bodybuf.Mapped()
	body, free, frees := mappedBody(t, 1<<20)
	ht := newHoldingTransport()
	ht.panics = true
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("no panic")
			}
		}()
		attempt(t.Context(), &http.Client{Transport: ht}, settingsFor(t, "http://127.0.0.1:1/in"),
			&queue.Entry{ID: "1", Key: "k", Body: body}, 1, time.Now(), trace.SpanContext{}, newSentBodies(20*time.Millisecond, free))
	}()
	if n, mapped := frees.Load(), bodybuf.Mapped()-before; n != 1 || mapped != 0 {
		t.Fatalf("after the panic: %d frees, %d bytes mapped; want 1, 0", n, mapped)
	}
	close(ht.let)
	<-ht.closed
	if n := frees.Load(); n != 1 {
		t.Errorf("%d frees", n)
	}
}

// The transport's Close and the end of the wait race: whichever comes
// last frees the body, once (-race checks the rest).
func TestSentBodyFreedOnceWhateverComesLast(t *testing.T) {
	for i := range 300 {
		var frees atomic.Int32
		sent := newSentBodies(time.Duration(i%3)*100*time.Microsecond, func() { frees.Add(1) })
		readers := []io.ReadCloser{sent.open([]byte("x")), sent.open([]byte("x"))}
		closed := make(chan struct{})
		go func() {
			for _, r := range readers {
				io.Copy(io.Discard, r)
				r.Close()
				r.Close()
			}
			close(closed)
		}()
		freedNow := sent.finish(false)
		if n := frees.Load(); freedNow && n != 1 {
			t.Fatalf("finish freed the body, and it was freed %d times", n)
		}
		<-closed
		if n := frees.Load(); n != 1 {
			t.Fatalf("round %d (finish freed it: %v): freed %d times", i, freedNow, n)
		}
	}
}

// Through the engine: the memory budget stays taken as long as the
// transport holds the body (the body's memory is), and both are given
// back when it lets go. The store is a real bolt file, whose ReadBody
// maps a large body.
func TestSentBodyLateKeepsItsBudgetUntilFreed(t *testing.T) {
	const size = 256 << 10
	store, err := bolt.Open(filepath.Join(t.TempDir(), "q.db"), queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	mem := budget.New(4*size, 0)
	ht := newHoldingTransport()
	before := bodybuf.Mapped()
	e := Start(Config{Store: store, Settings: settingsFor(t, "http://127.0.0.1:1/in"), Budget: mem,
		Transport: ht, BodyWait: 20 * time.Millisecond, PollInterval: 20 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })
	admit(t, store, "k", string(bytes.Repeat([]byte{'a'}, size)))

	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 }) // delivered: the 200
	if used, mapped := mem.Used(), bodybuf.Mapped()-before; used != size || mapped != size {
		t.Fatalf("delivered, the transport holding the body: budget used %d, %d bytes mapped; want %d, %d", used, mapped, size, size)
	}
	close(ht.let)
	<-ht.closed
	if used, mapped := mem.Used(), bodybuf.Mapped()-before; used != 0 || mapped != 0 {
		t.Fatalf("the transport let go of the body: budget used %d, %d bytes mapped; want 0, 0", used, mapped)
	}
}

// A body the transport closes in time is freed, and its budget given
// back, by the attempt, once.
func TestSentBodyClosedInTimeGivesItsBudgetBack(t *testing.T) {
	const size = 256 << 10
	store, err := bolt.Open(filepath.Join(t.TempDir(), "q.db"), queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	mem := budget.New(4*size, 0)
	ht := newHoldingTransport()
	close(ht.let)
	before := bodybuf.Mapped()
	e := Start(Config{Store: store, Settings: settingsFor(t, "http://127.0.0.1:1/in"), Budget: mem,
		Transport: ht, PollInterval: 20 * time.Millisecond})
	t.Cleanup(func() { e.Stop(time.Second) })
	admit(t, store, "k", string(bytes.Repeat([]byte{'a'}, size)))

	waitStats(t, store, func(st queue.Stats) bool { return st.Backlog == 0 })
	<-ht.closed
	if used, mapped := mem.Used(), bodybuf.Mapped()-before; used != 0 || mapped != 0 {
		t.Fatalf("delivered, the body closed: budget used %d, %d bytes mapped; want 0, 0", used, mapped)
	}
}
