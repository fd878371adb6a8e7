package dedupe

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Concurrent script calls (admits, acks) share round trips: a few
// pipeliners each take what is waiting (up to pipelineBatch calls) and send
// it as one pipeline of EVALSHAs, so under load one round trip, and one
// read and write on each side, carries many calls. A call that runs alone
// goes straight to Redis.
const (
	pipeliners    = 4
	pipelineBatch = 64
)

// scriptCall is one script run handed to a pipeliner.
type scriptCall struct {
	ctx    context.Context
	script *redis.Script
	keys   []string
	args   []any
	res    any
	err    error
	done   chan struct{}
}

// runScript runs script, sharing a pipeline with the calls running at the
// same time.
func (r *Redis) runScript(ctx context.Context, script *redis.Script, keys []string, args []any) (any, error) {
	defer r.inflight.Add(-1)
	if r.inflight.Add(1) == 1 {
		// alone: nothing to share a round trip with, so no hand-off
		return script.Run(ctx, r.client, keys, args...).Result()
	}
	call := &scriptCall{ctx: ctx, script: script, keys: keys, args: args, done: make(chan struct{})}
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
		return call.res, call.err
	case <-ctx.Done():
		return nil, fmt.Errorf("no answer before the deadline: %w", ctx.Err())
	}
}

func (r *Redis) pipeliner() {
	batch := make([]*scriptCall, 0, pipelineBatch)
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
		clear(batch)
	}
}

// runPipeline runs a batch of calls in one pipeline; a batch that meets a
// script cache without the script (Redis restarted) runs again with EVAL.
// A call that failed with NOSCRIPT ran nothing, so running it again is safe.
func (r *Redis) runPipeline(batch []*scriptCall) {
	if len(batch) == 1 {
		call := batch[0]
		call.res, call.err = call.script.Run(call.ctx, r.client, call.keys, call.args...).Result()
		close(call.done)
		return
	}
	run := func(eval bool) []*redis.Cmd {
		pipe := r.client.Pipeline()
		cmds := make([]*redis.Cmd, len(batch))
		for i, call := range batch {
			if eval {
				cmds[i] = call.script.Eval(call.ctx, pipe, call.keys, call.args...)
			} else {
				cmds[i] = call.script.EvalSha(call.ctx, pipe, call.keys, call.args...)
			}
		}
		// bounded by the client's timeouts and by the batch's deadline
		ctx, cancel := batchContext(batch)
		defer cancel()
		_, _ = pipe.Exec(ctx)
		return cmds
	}
	cmds := run(false)
	for _, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			cmds = run(true)
			break
		}
	}
	for i, call := range batch {
		call.res, call.err = cmds[i].Result()
		close(call.done)
	}
}

// batchContext ends at the earliest deadline of the batch's calls.
func batchContext(batch []*scriptCall) (context.Context, context.CancelFunc) {
	var earliest time.Time
	for _, call := range batch {
		if d, ok := call.ctx.Deadline(); ok && (earliest.IsZero() || d.Before(earliest)) {
			earliest = d
		}
	}
	if earliest.IsZero() {
		return context.WithCancel(context.Background())
	}
	return context.WithDeadline(context.Background(), earliest)
}
