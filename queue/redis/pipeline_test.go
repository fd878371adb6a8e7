package redis

import (
	"context"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/queue"
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

// gather stops at the byte bound and hands back the call that did not fit.
func TestGatherBoundsBytes(t *testing.T) {
	calls := make(chan *pipeCall, 8)
	for _, size := range []int{400 << 10, 400 << 10, 400 << 10, smallCall} {
		calls <- &pipeCall{size: size}
	}
	batch, next := gather([]*pipeCall{{size: smallCall}}, calls)
	if len(batch) != 3 || next == nil || next.size != 400<<10 {
		t.Fatalf("gather: %d calls, next %v; want 3 calls (1 small, 2 of 400 KiB) and the third 400 KiB call back", len(batch), next)
	}
	batch, next = gather([]*pipeCall{next}, calls)
	if len(batch) != 2 || next != nil {
		t.Fatalf("gather of the rest: %d calls, next %v; want 2 and none", len(batch), next)
	}

	many := make(chan *pipeCall, pipelineBatch+1)
	for range cap(many) {
		many <- &pipeCall{size: smallCall}
	}
	batch, next = gather([]*pipeCall{<-many}, many)
	if len(batch) != pipelineBatch || next != nil || len(many) != 1 {
		t.Fatalf("gather of %d small calls took %d (next %v, %d left); want %d", cap(many), len(batch), next, len(many), pipelineBatch)
	}
}

// For the tests in redis_test.go, which run the scripts themselves.

// AdmitOnce sends the commands of an admit of e under token at now
// on c, as the store does, and returns the admit script's reply.
func AdmitOnce(ctx context.Context, r *Store, c goredis.UniversalClient, e *queue.Entry, token string, now time.Time) ([]any, error) {
	pipe := c.Pipeline()
	cmds := r.admitCall(e, token, now)(pipe, false)
	_, _ = pipe.Exec(ctx)
	return admitReply(cmds)
}

// ClaimScript returns the claim script with its keys and arguments
// under token.
func ClaimScript(r *Store, max int, token string) (*goredis.Script, []string, []any) {
	if r == nil {
		return claimScript, nil, nil
	}
	keys, args := r.claimArgs(max, token)
	return claimScript, keys, args
}

// PipelineBytes is the byte bound of a shared pipeline.
const PipelineBytes = pipelineBytes

// InlineBodyMax is the largest body that travels inside the admit script.
var InlineBodyMax = inlineBodyMax
