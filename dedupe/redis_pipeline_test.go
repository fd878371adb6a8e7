package dedupe

import (
	"context"
	"testing"
	"time"
)

// A call with little time left (an ack after a slow upstream) must not cut
// short the admits that share its pipeline.
func TestBatchContextTakesTheLatestDeadline(t *testing.T) {
	soon, cancel1 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel1()
	later, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	want, _ := later.Deadline()

	ctx, cancel := batchContext([]*pipeCall{{ctx: soon}, {ctx: later}})
	defer cancel()
	if got, ok := ctx.Deadline(); !ok || !got.Equal(want) {
		t.Errorf("deadline %v, %v; want %v", got, ok, want)
	}

	ctx, cancel = batchContext([]*pipeCall{{ctx: soon}, {ctx: context.Background()}})
	defer cancel()
	if d, ok := ctx.Deadline(); ok {
		t.Errorf("a call without a deadline in the batch: deadline %v, want none", d)
	}
}
