package budget

import (
	"context"
	"testing"
	"time"
)

func TestIntakeBoundedByLimit(t *testing.T) {
	b := New(100, 30)
	if !b.TryTake(60) || !b.TryTake(40) {
		t.Fatal("takes within the limit refused")
	}
	if b.TryTake(1) {
		t.Fatal("a take past the limit was granted")
	}
	b.Give(40)
	if !b.TryTake(40) {
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
	if !b.TryTake(30) {
		t.Fatal("intake could not use the reserve delivery left")
	}
}

func TestOneLargeBodyStillGoesOut(t *testing.T) {
	b := New(100, 100) // max_body == max_memory: the reserve is everything
	if err := b.TakeForDelivery(context.Background(), 100); err != nil {
		t.Fatalf("a body the size of the budget could not be delivered: %v", err)
	}
	if b.TryTake(1) {
		t.Fatal("intake took bytes the delivery holds")
	}
}

func TestDeliveryWaitsForBytesGivenBack(t *testing.T) {
	b := New(100, 0)
	if !b.TryTake(80) {
		t.Fatal("take refused")
	}
	got := make(chan error, 1)
	go func() { got <- b.TakeForDelivery(context.Background(), 50) }()
	select {
	case err := <-got:
		t.Fatalf("delivery took 50 bytes while only 20 were free (err %v)", err)
	case <-time.After(20 * time.Millisecond):
	}
	b.Give(80)
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
	if !b.TryTake(90) {
		t.Fatal("take refused")
	}
	b.SetLimits(50, 10)
	if b.TryTake(1) {
		t.Fatal("a take granted past the new, smaller limit")
	}
	b.Give(90)
	if !b.TryTake(50) {
		t.Fatal("the new limit is not usable once bytes were given back")
	}
}

func TestBodyLargerThanTheBudgetGoesOutAlone(t *testing.T) {
	b := New(100, 10) // made smaller by a reload after a 150-byte body was queued
	if !b.TryTake(5) {
		t.Fatal("take refused")
	}
	got := make(chan error, 1)
	go func() { got <- b.TakeForDelivery(context.Background(), 150) }()
	select {
	case err := <-got:
		t.Fatalf("the large body went out while intake held bytes (err %v)", err)
	case <-time.After(20 * time.Millisecond):
	}
	b.Give(5)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if b.TryTake(1) {
		t.Fatal("intake took bytes while the oversized body held more than the budget")
	}
	b.GiveFromDelivery(150)
	if b.Used() != 0 {
		t.Fatalf("Used = %d", b.Used())
	}
}
