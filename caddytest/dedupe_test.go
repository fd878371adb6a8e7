package caddytest

import (
	"net/http"
	"testing"
)

// TestRunwareBatchSiblingsBothDelivered: two results of one batch share a
// taskUUID and differ by imageUUID. Both are real results: both are
// accepted and both reach the upstream, under different keys.
func TestRunwareBatchSiblingsBothDelivered(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	startCaddy(t, relayBlock(t, up.URL, ""))
	in := relayURL("/in", "")

	a := testdata(t, "runware/03-batch-item-a.json")
	b := testdata(t, "runware/04-batch-item-b.json")
	mustAccept(t, in, a)
	mustAccept(t, in, b)

	hitA := up.waitDelivered(t, a)
	hitB := up.waitDelivered(t, b)
	if hitA[0].Key == hitB[0].Key {
		t.Errorf("both batch results were forwarded with Idempotency-Key %q; siblings need distinct keys", hitA[0].Key)
	}
}

// TestBareAndWrappedAreOneDelivery: the same image result sent bare and
// wrapped in {"data":[...]} has one key: the second is a duplicate and the
// upstream gets the payload once.
func TestBareAndWrappedAreOneDelivery(t *testing.T) {
	up := newUpstream(t, barrierResponder(always(http.StatusOK)))
	startCaddy(t, relayBlock(t, up.URL, ""))
	in := relayURL("/in", "")

	bare := testdata(t, "runware/01-image-bare.json")
	wrapped := testdata(t, "runware/02-image-wrapped.json")
	mustAccept(t, in, bare)
	expectStatus(t, post(t, in, wrapped), http.StatusOK, "duplicate")

	hits := up.waitDelivered(t, bare)
	barrier(t, up, in)
	if n := len(withKey(up.all(), hits[0].Key)); n != 1 {
		t.Errorf("%d requests with the payload's key, want 1:\n%s", n, describe(up.all()))
	}
	if n := len(withBody(up.all(), wrapped)); n != 0 {
		t.Errorf("the wrapped duplicate was forwarded %d times, want never", n)
	}
}
