package dedupe

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Concurrent calls (admits, acks) share round trips: a few pipeliners each
// take what is waiting (up to pipelineBatch calls) and send it as one
// pipeline, so under load one round trip, and one read and write on each
// side, carries many calls. A call that runs alone is sent at once, by its
// own goroutine.
const (
	pipeliners    = 4
	pipelineBatch = 64
)

// pipeCall is one call's commands, queued into a shared pipeline.
type pipeCall struct {
	ctx context.Context
	// queue adds the call's commands to pipe; with eval, scripts are sent
	// whole (EVAL) because the server's script cache lacked one of them.
	queue func(pipe redis.Pipeliner, eval bool) []redis.Cmder
	cmds  []redis.Cmder
	done  chan struct{}
}

// runScript runs script, sharing a pipeline with the calls running at the
// same time.
func (r *Redis) runScript(ctx context.Context, script *redis.Script, keys []string, args []any) (any, error) {
	cmds, err := r.runCmds(ctx, func(pipe redis.Pipeliner, eval bool) []redis.Cmder {
		if eval {
			return []redis.Cmder{script.Eval(ctx, pipe, keys, args...)}
		}
		return []redis.Cmder{script.EvalSha(ctx, pipe, keys, args...)}
	})
	if err != nil {
		return nil, err
	}
	return cmds[0].(*redis.Cmd).Result()
}

// runCmds runs the commands queue adds, sharing a pipeline with the calls
// running at the same time. The error is the caller's deadline or the
// store's closing; each command carries its own result.
func (r *Redis) runCmds(ctx context.Context, queue func(redis.Pipeliner, bool) []redis.Cmder) ([]redis.Cmder, error) {
	call := &pipeCall{ctx: ctx, queue: queue}
	defer r.inflight.Add(-1)
	if r.inflight.Add(1) == 1 {
		// alone: nothing to share a round trip with, so no hand-off
		r.runPipeline([]*pipeCall{call})
		return call.cmds, nil
	}
	call.done = make(chan struct{})
	select {
	case r.calls <- call:
	case <-r.stop:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// Once handed over the call may run even if we stop waiting. For an
	// admit, past the caller's deadline the sender gets a 503 all the same:
	// if the payload was stored after all, its retry is answered
	// "duplicate" and nothing is lost, while an answer that never comes
	// makes every sender time out.
	select {
	case <-call.done:
		return call.cmds, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("no answer before the deadline: %w", ctx.Err())
	}
}

func (r *Redis) pipeliner() {
	batch := make([]*pipeCall, 0, pipelineBatch)
	for {
		select {
		case <-r.stop:
			return
		case call := <-r.calls:
			batch = append(batch[:0], call)
		}
	more:
		for len(batch) < pipelineBatch {
			select {
			case call := <-r.calls:
				batch = append(batch, call)
			default:
				break more
			}
		}
		r.runPipeline(batch)
		for _, call := range batch {
			close(call.done)
		}
		clear(batch)
	}
}

// runPipeline sends a batch of calls as one pipeline. A batch that meets a
// script cache without one of its scripts (Redis restarted) is sent again
// with the scripts whole: a script that failed with NOSCRIPT ran nothing,
// and the plain commands sent with scripts (acks) may safely run twice.
func (r *Redis) runPipeline(batch []*pipeCall) {
	run := func(eval bool) {
		pipe := r.client.Pipeline()
		for _, call := range batch {
			call.cmds = call.queue(pipe, eval)
		}
		// bounded by the client's timeouts and by the batch's deadline
		ctx := batch[0].ctx
		if len(batch) > 1 {
			var cancel context.CancelFunc
			ctx, cancel = batchContext(batch)
			defer cancel()
		}
		_, _ = pipe.Exec(ctx)
	}
	run(false)
	for _, call := range batch {
		for _, c := range call.cmds {
			if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				run(true)
				return
			}
		}
	}
}

// batchContext ends at the latest deadline of the batch's calls: each
// caller stops waiting at its own deadline, and one caller with little time
// left (an ack after a slow upstream) must not cut the others short.
func batchContext(batch []*pipeCall) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, call := range batch {
		d, ok := call.ctx.Deadline()
		if !ok {
			return context.WithCancel(context.Background())
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.Background(), latest)
}
