package redis

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
	"github.com/hookrelay/caddy-webhook-relay/queue"

	goredis "github.com/redis/go-redis/v9"
)

// Concurrent calls (admits, acks) share round trips: a few pipeliners each
// take what is waiting (up to pipelineBatch calls and pipelineBytes of
// arguments) and send it as one pipeline, so under load one round trip, and
// one read and write on each side, carries many calls. A call that runs
// alone is sent at once, by its own goroutine, and so is one larger than
// pipelineBytes: a big body must not hold up the small calls around it, nor
// a pipeline grow without bound.
const (
	pipeliners    = 4
	pipelineBatch = 64
	pipelineBytes = 1 << 20
)

// pipeCall is one call's commands, queued into a shared pipeline.
type pipeCall struct {
	ctx context.Context
	// size is about how many bytes of arguments the call sends.
	size int
	// queue adds the call's commands to pipe; with eval, scripts are sent
	// whole (EVAL) because the server's script cache lacked one of them.
	enqueue func(pipe goredis.Pipeliner, eval bool) []goredis.Cmder
	// ack, instead of enqueue, is the id of an entry to acknowledge in
	// lane: the acks of one batch share their commands (see queueAcks).
	ack  string
	lane *lane
	cmds []goredis.Cmder
	// err, when set, is why the call has no results: see runBatch.
	err  error
	done chan struct{}
	// borrowed: the call's arguments hold memory its caller frees once the
	// call returns (a large body, see bodybuf), so the call returns only
	// once the pipeline is done with them, deadline or not.
	borrowed bool
	// answered: done is closed (set and read by the pipeliner only).
	answered bool
}

// answer ends the wait of a call handed to a pipeliner, with err instead of
// results when err is set; a call already answered is left as it is.
func (c *pipeCall) answer(err error) {
	if c.answered {
		return
	}
	c.answered = true
	if err != nil {
		c.cmds, c.err = nil, err
	}
	close(c.done)
}

// answerTimeout bounds how long a call handed to a pipeliner waits for it
// when the caller's own deadline is later, or missing (an admit's is never
// later: see queue.AdmitTimeout). The pipeliners always answer, even when
// they panic (see pipelineLoop), so this is only a second line of defence.
// (A variable only so that a test can shorten it.)
var answerTimeout = queue.AdmitTimeout

// pipelineHook, when set (by a test), runs in the pipeliner with each batch
// it gathered, before the batch is sent. Nil in production.
var pipelineHook atomic.Pointer[func([]*pipeCall)]

// runScript runs script, whose arguments take about size bytes, sharing a
// pipeline with the calls running at the same time.
func (r *Store) runScript(ctx context.Context, size int, script *goredis.Script, keys []string, args []any) (any, error) {
	cmds, err := r.runCmds(ctx, size, func(pipe goredis.Pipeliner, eval bool) []goredis.Cmder {
		if eval {
			return []goredis.Cmder{script.Eval(ctx, pipe, keys, args...)}
		}
		return []goredis.Cmder{script.EvalSha(ctx, pipe, keys, args...)}
	})
	if err != nil {
		return nil, err
	}
	return cmds[0].(*goredis.Cmd).Result()
}

// runCmds runs the commands queue adds, whose arguments take about size
// bytes, sharing a pipeline with the calls running at the same time. The
// error is the caller's deadline or the store's closing; each command
// carries its own result.
func (r *Store) runCmds(ctx context.Context, size int, enqueue func(goredis.Pipeliner, bool) []goredis.Cmder) ([]goredis.Cmder, error) {
	call := &pipeCall{ctx: ctx, size: size, enqueue: enqueue}
	if err := r.send(call); err != nil {
		return nil, err
	}
	return call.cmds, nil
}

// send runs call, sharing a pipeline with the calls running at the same
// time, and sets its cmds. The error is the caller's deadline, the store's
// closing, or errPanicked.
func (r *Store) send(call *pipeCall) error {
	ctx := call.ctx
	defer r.inflight.Add(-1)
	if r.inflight.Add(1) == 1 || call.size > pipelineBytes {
		// alone, or too big to share: no hand-off
		r.runBatch([]*pipeCall{call})
		return call.err
	}
	call.done = make(chan struct{})
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > answerTimeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, answerTimeout)
		defer cancel()
	}
	select {
	case r.calls <- call:
	case <-r.stop:
		return queue.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once handed over the call may run even if we stop waiting. For an
	// admit, past the caller's deadline the sender gets a 503 all the same:
	// if the payload was stored after all, its retry is answered
	// "duplicate" and nothing is lost, while an answer that never comes
	// makes every sender time out.
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		if call.borrowed {
			// not long: the batch's own deadline is the latest of its
			// calls', the client's timeouts bound it too, and a pipeliner
			// that panics answers the calls it holds. Returning earlier
			// would let the caller unmap memory the pipeline may still
			// read, which crashes the process.
			<-call.done
		}
		return fmt.Errorf("no answer before the deadline: %w", ctx.Err())
	}
}

// pipeliner runs the batches of calls handed to it until the store
// closes. A panic in a batch fails the batch's calls and is logged (see
// runBatch); one anywhere else in the loop fails the calls the loop holds,
// is logged, and starts the loop again, so the goroutine never takes Caddy
// down, never leaves a caller waiting, and always serves later calls.
func (r *Store) pipeliner() {
	for guard.Run(r.log, "the Redis store's pipeliner", r.pipelineLoop) {
	}
}

func (r *Store) pipelineLoop() {
	// held: the calls taken from r.calls and not yet answered, the batch
	// first and then the call that did not fit in it, if any.
	held := make([]*pipeCall, 0, pipelineBatch)
	defer func() {
		// Only a panic leaves any: each gets errPanicked, and the panic
		// goes on to guard.Run (see pipeliner), which logs it once.
		for _, call := range held {
			call.answer(errPanicked)
		}
	}()
	for {
		if len(held) == 0 {
			select {
			case <-r.stop:
				return
			case call := <-r.calls:
				held = append(held, call)
			}
		}
		n := gather(&held, r.calls)
		batch := held[:n]
		if hook := pipelineHook.Load(); hook != nil {
			(*hook)(batch)
		}
		r.runBatch(batch)
		for _, call := range batch {
			call.answer(nil)
		}
		left := copy(held, held[n:])
		clear(held[left:])
		held = held[:left]
	}
}

// errPanicked is what the calls of a batch get when running it panicked.
var errPanicked = errors.New("sending the pipeline panicked (logged with its stack); whether its commands ran is unknown")

// runBatch sends a batch of calls as one pipeline (runPipeline). Should
// that panic (a bug in the store or in go-redis), the panic is logged with
// its stack and every call in the batch gets errPanicked instead of
// results, so that no caller waits for an answer that will never come: an
// admit answers 503, and the sender retries. A command that ran before the
// panic is as one whose reply was lost.
func (r *Store) runBatch(batch []*pipeCall) {
	if guard.Run(r.log, "the Redis store's pipeline", func() { r.runPipeline(batch) }) {
		for _, call := range batch {
			call.cmds, call.err = nil, errPanicked
		}
	}
}

// gather adds the calls waiting on calls to the batch in held, up to
// pipelineBatch calls and pipelineBytes in all. It returns the length of
// the batch: the call after it in held, if any, is one it took that did
// not fit. Every call it takes is in held at once, so that a panic cannot
// lose it (see pipelineLoop).
func gather(held *[]*pipeCall, calls <-chan *pipeCall) int {
	size := 0
	for _, call := range *held {
		size += call.size
	}
	for len(*held) < pipelineBatch {
		select {
		case call := <-calls:
			*held = append(*held, call)
			if size+call.size > pipelineBytes {
				return len(*held) - 1
			}
			size += call.size
		default:
			return len(*held)
		}
	}
	return len(*held)
}

// runPipeline sends a batch of calls as one pipeline. The calls that meet a
// script cache without their script (Redis restarted, SCRIPT FLUSH) are
// sent again with the script whole: a script that failed with NOSCRIPT ran
// nothing, and the other calls keep the results they got.
func (r *Store) runPipeline(batch []*pipeCall) {
	r.exec(batch, false)
	var again []*pipeCall
	for _, call := range batch {
		for _, c := range call.cmds {
			if goredis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				again = append(again, call)
				break
			}
		}
	}
	if len(again) > 0 {
		r.exec(again, true)
	}
}

// exec sends calls as one pipeline, bounded by the client's timeouts and by
// the calls' deadlines.
func (r *Store) exec(calls []*pipeCall, eval bool) {
	pipe := r.client.Pipeline()
	var acks []*pipeCall
	for _, call := range calls {
		if call.ack != "" {
			acks = append(acks, call)
			continue
		}
		call.cmds = call.enqueue(pipe, eval)
	}
	if len(acks) > 0 {
		cmds := r.queueAcks(pipe, acks, eval)
		for _, call := range acks {
			call.cmds = cmds
		}
	}
	ctx := calls[0].ctx
	if len(calls) > 1 {
		var cancel context.CancelFunc
		ctx, cancel = batchContext(calls)
		defer cancel()
	}
	_, err := pipe.Exec(ctx)
	r.answered(err)
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
