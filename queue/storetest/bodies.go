package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// bodySizes are the body lengths the body tests admit: small ones, both
// sides of bodybuf's threshold, and past the Redis store's first chunk.
var bodySizes = []int{0, 300, bodybuf.Threshold - 1, bodybuf.Threshold, 300 << 10}

// bodyOf is a body of n bytes that differs at every offset mod 251.
func bodyOf(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i%251) + seed
	}
	return b
}

// The handler frees the body's buffer (a mapping, for a large one) once
// Admit returns: no store may keep it. Admitted from a bodybuf buffer that
// is freed at once, the body reads back whole (a store that kept the
// mapping would crash here, or read other bytes).
func testAdmitKeepsNoBody(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	for i, n := range bodySizes {
		want := bodyOf(n, byte(i))
		e := f.entry(fmt.Sprintf("body-%d", n))
		e.Body = bodybuf.Alloc(n)
		copy(e.Body, want)
		f.admitBody(e)
		bodybuf.Free(e.Body)
		e.Body = nil
		got, err := f.s.Body(f.ctx, e.ID)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Body of a %d-byte body admitted from a buffer freed after Admit: %d bytes (want %d), equal %v, err %v",
				n, len(got), n, bytes.Equal(got, want), err)
		}
	}
}

// A store that is a queue.BodyReader hands out the same bytes as Body,
// and ErrNotFound for an entry no longer queued.
func testReadBody(t *testing.T, newStore Factory) {
	f := setup(t, newStore, 0)
	r, ok := f.s.(queue.BodyReader)
	if !ok {
		t.Skip("not a queue.BodyReader")
	}
	var es []*queue.Entry
	for i, n := range bodySizes {
		e := f.entry(fmt.Sprintf("read-%d", n))
		e.Body = bodyOf(n, byte(i))
		f.admitBody(e)
		es = append(es, e)
	}
	for i, n := range bodySizes {
		got, err := r.ReadBody(f.ctx, es[i].ID)
		if err != nil || len(got) != n || !bytes.Equal(got, bodyOf(n, byte(i))) {
			t.Errorf("ReadBody of a %d-byte body: %d bytes, err %v", n, len(got), err)
		}
		bodybuf.Free(got)
	}
	gone := es[len(es)-1]
	f.claim(len(es))
	f.ack(gone)
	if got, err := r.ReadBody(f.ctx, gone.ID); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("ReadBody of an acknowledged entry: %d bytes, err %v; want ErrNotFound", len(got), err)
	}
}

// admitBody admits e, which must be accepted.
func (f *fixture) admitBody(e *queue.Entry) {
	f.t.Helper()
	if adm, err := f.admit(e); err != nil || adm != queue.Accepted {
		f.t.Fatalf("Admit of a %d-byte body: %v, %v; want accepted", len(e.Body), adm, err)
	}
	f.wantAdmitted(e)
}
