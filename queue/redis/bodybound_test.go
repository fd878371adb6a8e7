package redis

import (
	"context"
	"testing"
	"time"
)

func TestByteBound(t *testing.T) {
	b := &byteBound{limit: 10}
	ctx := t.Context()
	if n, err := b.take(ctx, 6); n != 6 || err != nil {
		t.Fatalf("take(6) = %d, %v", n, err)
	}
	// 5 does not fit: it waits, and so does 1 behind it, first come first served
	five, one := make(chan int64), make(chan int64)
	go func() { n, _ := b.take(ctx, 5); five <- n }()
	waitWaiters(t, b, 1)
	go func() { n, _ := b.take(ctx, 1); one <- n }()
	waitWaiters(t, b, 2)

	// a take that gives up leaves the queue
	short, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	if n, err := b.take(short, 1); err == nil {
		t.Fatalf("take past its deadline = %d, nil; want the deadline's error", n)
	}
	if waitWaiters(t, b, 2); b.used != 6 {
		t.Fatalf("used %d, want 6", b.used)
	}

	b.give(6)
	if n := <-five; n != 5 {
		t.Fatalf("the 5 waiting got %d", n)
	}
	if n := <-one; n != 1 {
		t.Fatalf("the 1 waiting got %d", n)
	}
	// more than the bound takes the whole bound, once it is all free
	big := make(chan int64)
	go func() { n, _ := b.take(ctx, 100); big <- n }()
	waitWaiters(t, b, 1)
	b.give(5)
	b.give(1)
	if n := <-big; n != 10 {
		t.Fatalf("take(100) took %d, want the whole bound, 10", n)
	}
	b.give(10)
	if b.used != 0 || b.waiters.Len() != 0 {
		t.Errorf("at the end: used %d, %d waiting; want none", b.used, b.waiters.Len())
	}
}

// waitWaiters waits until n takes wait on b.
func waitWaiters(t *testing.T, b *byteBound, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		got := b.waiters.Len()
		b.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d takes waiting, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}
