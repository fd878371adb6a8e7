package budget

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestIntakeBoundedByLimit(t *testing.T) {
	b := New(100, 30)
	if b.Take("", 60) != nil || b.Take("", 40) != nil {
		t.Fatal("takes within the limit refused")
	}
	if b.Take("", 1) == nil {
		t.Fatal("a take past the limit was granted")
	}
	b.Give("", 40)
	if b.Take("", 40) != nil {
		t.Fatal("a take refused after bytes were given back")
	}
	if got := b.Used(); got != 100 {
		t.Fatalf("Used = %d, want 100", got)
	}
}

func TestDeliveryLeavesTheReserve(t *testing.T) {
	b := New(100, 30)
	ctx := context.Background()
	if err := b.TakeForDelivery(ctx, 40); err != nil {
		t.Fatal(err)
	}
	if err := b.TakeForDelivery(ctx, 30); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := b.TakeForDelivery(short, 1); err == nil {
		t.Fatal("delivery took from the reserve while it already held bytes")
	}
	if b.Take("", 30) != nil {
		t.Fatal("intake could not use the reserve delivery left")
	}
}

func TestOneLargeBodyStillGoesOut(t *testing.T) {
	b := New(100, 100) // max_body == max_memory: the reserve is everything
	if err := b.TakeForDelivery(context.Background(), 100); err != nil {
		t.Fatalf("a body the size of the budget could not be delivered: %v", err)
	}
	if b.Take("", 1) == nil {
		t.Fatal("intake took bytes the delivery holds")
	}
}

func TestDeliveryWaitsForBytesGivenBack(t *testing.T) {
	b := New(100, 0)
	if b.Take("", 80) != nil {
		t.Fatal("take refused")
	}
	got := make(chan error, 1)
	go func() { got <- b.TakeForDelivery(context.Background(), 50) }()
	select {
	case err := <-got:
		t.Fatalf("delivery took 50 bytes while only 20 were free (err %v)", err)
	case <-time.After(20 * time.Millisecond):
	}
	b.Give("", 80)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	b.GiveFromDelivery(50)
	if got := b.Used(); got != 0 {
		t.Fatalf("Used = %d after everything was given back", got)
	}
}

func TestSmallerLimitRefusesUntilGivenBack(t *testing.T) {
	b := New(100, 10)
	if b.Take("", 90) != nil {
		t.Fatal("take refused")
	}
	b.SetLimits(Limits{Total: 50, ForIntake: 10})
	if b.Take("", 1) == nil {
		t.Fatal("a take granted past the new, smaller limit")
	}
	b.Give("", 90)
	if b.Take("", 50) != nil {
		t.Fatal("the new limit is not usable once bytes were given back")
	}
}

func TestBodyLargerThanTheBudgetGoesOutAlone(t *testing.T) {
	b := New(100, 10) // made smaller by a reload after a 150-byte body was queued
	if b.Take("", 5) != nil {
		t.Fatal("take refused")
	}
	got := make(chan error, 1)
	go func() { got <- b.TakeForDelivery(context.Background(), 150) }()
	select {
	case err := <-got:
		t.Fatalf("the large body went out while intake held bytes (err %v)", err)
	case <-time.After(20 * time.Millisecond):
	}
	b.Give("", 5)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if b.Take("", 1) == nil {
		t.Fatal("intake took bytes while the oversized body held more than the budget")
	}
	b.GiveFromDelivery(150)
	if b.Used() != 0 {
		t.Fatalf("Used = %d", b.Used())
	}
}

func TestOneKeyHoldsAtMostItsShare(t *testing.T) {
	b := New(100, 0)
	b.SetLimits(Limits{Total: 100, Share: 30})
	if err := b.Take("a", 20); err != nil {
		t.Fatal(err)
	}
	if err := b.Take("a", 11); !errors.Is(err, ErrShare) {
		t.Fatalf("a take past a's share: %v, want ErrShare", err)
	}
	if err := b.Take("a", 10); err != nil {
		t.Fatalf("a take up to a's share exactly: %v", err)
	}
	// another key is not refused for a's sake
	if err := b.Take("b", 30); err != nil {
		t.Fatalf("b refused while a held its share: %v", err)
	}
	if got := b.Held("a"); got != 30 {
		t.Fatalf("Held(a) = %d, want 30", got)
	}
	b.Give("a", 30)
	if got := b.Held("a"); got != 0 {
		t.Fatalf("Held(a) = %d after a gave everything back", got)
	}
	if len(b.byKey) != 1 {
		t.Fatalf("keys holding nothing are kept: %v", b.byKey)
	}
	if err := b.Take("a", 30); err != nil {
		t.Fatalf("a refused after giving its share back: %v", err)
	}
}

func TestIntakeNeverTakesTheDeliveryReserve(t *testing.T) {
	b := New(100, 0)
	b.SetLimits(Limits{Total: 100, ForDelivery: 25})
	for _, key := range []string{"a", "b", "c"} {
		if err := b.Take(key, 25); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
	}
	if err := b.Take("d", 1); !errors.Is(err, ErrFull) {
		t.Fatalf("intake took from delivery's reserve: %v, want ErrFull", err)
	}
	// delivery gets the reserve at once, without waiting for intake
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a wait would fail: the bytes must be there now
	if err := b.TakeForDelivery(ctx, 25); err != nil {
		t.Fatalf("delivery could not take its reserve while intake held the rest: %v", err)
	}
	if err := b.Take("d", 1); !errors.Is(err, ErrFull) {
		t.Fatalf("a take past the whole budget: %v, want ErrFull", err)
	}
	b.GiveFromDelivery(25)
	b.Give("a", 25)
	if err := b.Take("d", 25); err != nil {
		t.Fatalf("intake refused after bytes were given back: %v", err)
	}
}

// TestDeliveryBytesDoNotCountAgainstIntake: what delivery holds beyond its
// reserve is not intake's, so intake may still take what is free.
func TestDeliveryBytesDoNotCountAgainstIntake(t *testing.T) {
	b := New(100, 0)
	b.SetLimits(Limits{Total: 100, ForIntake: 10, ForDelivery: 20})
	if err := b.TakeForDelivery(context.Background(), 50); err != nil {
		t.Fatal(err)
	}
	if err := b.Take("a", 50); err != nil {
		t.Fatalf("intake refused 50 of the 50 free bytes: %v", err)
	}
}

func TestRelayLimits(t *testing.T) {
	const MiB = 1 << 20
	for _, tc := range []struct {
		maxMemory, maxBody int64
		want               Limits
	}{
		// the defaults: a quarter for delivery, an eighth per client
		{256 * MiB, 32 * MiB, Limits{Total: 256 * MiB, ForIntake: 32 * MiB, ForDelivery: 64 * MiB, Share: 32 * MiB}},
		// a large max_body: both at least max_body
		{256 * MiB, 100 * MiB, Limits{Total: 256 * MiB, ForIntake: 100 * MiB, ForDelivery: 100 * MiB, Share: 100 * MiB}},
		// small bodies: the fractions
		{8 * MiB, 256 << 10, Limits{Total: 8 * MiB, ForIntake: 256 << 10, ForDelivery: 2 * MiB, Share: 1 * MiB}},
		// less than twice max_body: intake keeps one max_body
		{48 * MiB, 32 * MiB, Limits{Total: 48 * MiB, ForIntake: 32 * MiB, ForDelivery: 16 * MiB, Share: 32 * MiB}},
		{32 * MiB, 32 * MiB, Limits{Total: 32 * MiB, ForIntake: 32 * MiB, ForDelivery: 0, Share: 32 * MiB}},
	} {
		got := RelayLimits(tc.maxMemory, tc.maxBody)
		if got != tc.want {
			t.Errorf("RelayLimits(%d, %d) = %+v, want %+v", tc.maxMemory, tc.maxBody, got, tc.want)
		}
		// whatever the sizes, one client can always send one max_body
		b := New(0, 0)
		b.SetLimits(got)
		if err := b.Take("a", tc.maxBody); err != nil {
			t.Errorf("max_memory %d, max_body %d: one max_body body refused: %v", tc.maxMemory, tc.maxBody, err)
		}
	}
}
