package redis

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"
)

// Body bytes in flight are bounded, first come first served; a body larger
// than the bound goes alone, once nothing else is in flight.
func TestTakeBodyBytes(t *testing.T) {
	r := &Store{bodies: semaphore.NewWeighted(bodyBytesInFlight)}
	ctx := t.Context()
	releaseMost, err := r.takeBodyBytes(ctx, bodyBytesInFlight-10)
	if err != nil {
		t.Fatal(err)
	}
	took := func(n int) <-chan func() {
		ch := make(chan func(), 1)
		go func() {
			release, err := r.takeBodyBytes(ctx, n)
			if err != nil {
				t.Errorf("takeBodyBytes(%d): %v", n, err)
				return
			}
			ch <- release
		}()
		return ch
	}
	waiting := func(ch <-chan func(), what string) {
		t.Helper()
		select {
		case <-ch:
			t.Fatalf("%s did not wait", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
	big := took(10 * bodyBytesInFlight)
	waiting(big, "a body larger than the bound, while another is in flight,")
	small := took(1) // fits, but comes after the big one
	waiting(small, "a small body behind a big one")

	short, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	if _, err := r.takeBodyBytes(short, 1); err == nil {
		t.Fatal("takeBodyBytes past its deadline succeeded; want the deadline's error")
	}

	releaseMost()
	releaseBig := <-big
	waiting(small, "a small body while a big one is in flight")
	releaseBig()
	(<-small)()
	if !r.bodies.TryAcquire(bodyBytesInFlight) {
		t.Error("at the end the bound is not all free")
	}
}
