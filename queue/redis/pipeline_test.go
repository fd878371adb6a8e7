package redis

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
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
	held := []*pipeCall{{size: smallCall}}
	if n := gather(&held, calls); n != 3 || len(held) != 4 || held[3].size != 400<<10 {
		t.Fatalf("gather: batch of %d, %d held; want 3 calls (1 small, 2 of 400 KiB) and the third 400 KiB call held after them", n, len(held))
	}
	held = held[3:]
	if n := gather(&held, calls); n != 2 || len(held) != 2 {
		t.Fatalf("gather of the rest: batch of %d, %d held; want 2 and 2", n, len(held))
	}

	many := make(chan *pipeCall, pipelineBatch+1)
	for range cap(many) {
		many <- &pipeCall{size: smallCall}
	}
	held = []*pipeCall{<-many}
	if n := gather(&held, many); n != pipelineBatch || len(held) != n || len(many) != 1 {
		t.Fatalf("gather of %d small calls: batch of %d, %d held, %d left; want %d", cap(many), n, len(held), len(many), pipelineBatch)
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

// AdmitWaitingOnce runs an admit of e under token at now as a store with
// wait_replicas or durable_ack does, on a connection of r's own, and
// returns the admit script's reply or the wait's error.
func AdmitWaitingOnce(ctx context.Context, r *Store, e *queue.Entry, token string, now time.Time) ([]any, error) {
	return r.admitWaiting(ctx, r.admitCall(e, token, now))
}

// ClaimScript returns the claim script with its keys and arguments
// under token.
func ClaimScript(r *Store, max int, token string) (*goredis.Script, []string, []any) {
	if r == nil {
		return claimScript, nil, nil
	}
	keys, args := r.def.claimArgs(max, token)
	return claimScript, keys, args
}

// PipelineBytes is the byte bound of a shared pipeline.
const PipelineBytes = pipelineBytes

// InlineBodyMax is the largest body that travels inside the admit script.
var InlineBodyMax = inlineBodyMax

// A panic while a batch is sent fails that batch's calls instead of leaving
// them waiting, is logged with its stack, and leaves every pipeliner
// serving later calls; a call sent alone gets the same error.
func TestPipelinerSurvivesPanic(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	core, logs := observer.New(zap.ErrorLevel)
	client := goredis.NewUniversalClient(&goredis.UniversalOptions{Addrs: []string{srv.Addr()}, MaxRetries: -1, PipelinePoolSize: -1})
	s, err := New(t.Context(), client, Config{Prefix: "panics", Consumer: "c1", Logger: zap.New(core)}, queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ping := func(pipe goredis.Pipeliner) []goredis.Cmder { return []goredis.Cmder{pipe.Ping(ctx)} }

	if _, err := s.runCmds(ctx, smallCall, func(goredis.Pipeliner, bool) []goredis.Cmder { panic("boom, alone") }); !errors.Is(err, errPanicked) {
		t.Fatalf("a call alone that panics: %v, want errPanicked", err)
	}

	// One call held in flight, so that the calls below go to the pipeliners.
	release, holding, held := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		_, err := s.runCmds(ctx, smallCall, func(pipe goredis.Pipeliner, _ bool) []goredis.Cmder {
			close(holding)
			<-release
			return ping(pipe)
		})
		held <- err
	}()
	<-holding

	// everyPipeliner sends one call to each pipeliner and has them all in
	// their batches at once, then runs then in each: the calls go one after
	// the other, each once the one before is in its batch, so no pipeliner
	// gathers two; with a pipeliner gone, the last call finds none free.
	everyPipeliner := func(then func()) []error {
		errs := make([]error, pipeliners)
		all := make(chan struct{})
		var entered atomic.Int32
		var wg sync.WaitGroup
		for i := range pipeliners {
			in := make(chan struct{})
			wg.Go(func() {
				_, errs[i] = s.runCmds(ctx, smallCall, func(pipe goredis.Pipeliner, _ bool) []goredis.Cmder {
					close(in)
					if entered.Add(1) == pipeliners {
						close(all)
					}
					select {
					case <-all:
					case <-ctx.Done():
					}
					then()
					return ping(pipe)
				})
			})
			select {
			case <-in:
			case <-ctx.Done():
				t.Fatalf("call %d of %d never reached a pipeliner", i+1, pipeliners)
			}
		}
		wg.Wait()
		return errs
	}
	for i, err := range everyPipeliner(func() { panic("boom") }) {
		if !errors.Is(err, errPanicked) {
			t.Errorf("call %d in a batch that panicked: %v, want errPanicked", i, err)
		}
	}
	for i, err := range everyPipeliner(func() {}) {
		if err != nil {
			t.Errorf("call %d after the panics: %v", i, err)
		}
	}
	close(release)
	if err := <-held; err != nil {
		t.Errorf("the held call: %v", err)
	}

	// the store as a whole still works
	e := &queue.Entry{Key: "after", Body: []byte(`{}`)}
	if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
		t.Fatalf("Admit after the panics = %v, %v", got, err)
	}
	if b, err := s.Body(ctx, e.ID); err != nil || string(b) != "{}" {
		t.Fatalf("Body after the panics = %q, %v", b, err)
	}

	entries := logs.All()
	if len(entries) != 1+pipeliners {
		t.Fatalf("logged %d errors, want %d (one per panic): %v", len(entries), 1+pipeliners, entries)
	}
	for _, e := range entries {
		f := e.ContextMap()
		if p, _ := f["panic"].(string); !strings.HasPrefix(p, "boom") || !strings.Contains(f["stack"].(string), "runBatch") {
			t.Errorf("logged %q %v; want the panic and a stack through runBatch", e.Message, f)
		}
	}
}

// BodyBytesInFlight bounds the bytes of large bodies on their way to or from
// Redis at once.
const BodyBytesInFlight = bodyBytesInFlight

// An admit whose body the caller frees once Admit returns (borrowed) does
// not return while a pipeline may still write it, even past its deadline;
// other calls stop waiting at their deadline.
func TestSendBorrowedWaitsForThePipeline(t *testing.T) {
	for _, borrowed := range []bool{false, true} {
		r := &Store{calls: make(chan *pipeCall), stop: make(chan struct{})}
		r.inflight.Add(1) // another call running: this one is handed over
		var written atomic.Bool
		go func() {
			call := <-r.calls
			<-call.ctx.Done()
			time.Sleep(50 * time.Millisecond) // the pipeline still writing past the deadline
			written.Store(true)
			close(call.done)
		}()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
		err := r.send(&pipeCall{ctx: ctx, borrowed: borrowed})
		cancel()
		if err == nil {
			t.Errorf("borrowed %v: send past its deadline returned no error", borrowed)
		}
		if borrowed && !written.Load() {
			t.Error("a call with a borrowed body returned while the pipeline still had it")
		}
		if !borrowed && written.Load() {
			t.Error("a call without a borrowed body waited for the pipeline past its deadline")
		}
	}
}

// panicHere marks, in its context, the call whose batch pipelineHook
// panics on.
type panicHere struct{}

// A panic in the pipeliner outside sending a batch (here after gathering
// it) answers the calls it held with errPanicked, an admit whose body is
// borrowed too, which waits for its answer past its deadline; the panic is
// logged once with its stack, and the pipeliners serve later calls.
func TestPipelinerPanicOutsideBatchAnswers(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	core, logs := observer.New(zap.ErrorLevel)
	client := goredis.NewUniversalClient(&goredis.UniversalOptions{Addrs: []string{srv.Addr()}, MaxRetries: -1, PipelinePoolSize: -1})
	s, err := New(t.Context(), client, Config{Prefix: "loop-panics", Consumer: "c1", Logger: zap.New(core)}, queue.Options{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	var fired atomic.Int32
	hook := func(batch []*pipeCall) {
		for _, c := range batch {
			if c.ctx.Value(panicHere{}) != nil {
				fired.Add(1)
				panic("boom in the loop")
			}
		}
	}
	pipelineHook.Store(&hook)
	defer pipelineHook.Store(nil)

	// One call held in flight, so that the admits below go to the pipeliners.
	release, holding, held := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		_, err := s.runCmds(ctx, smallCall, func(pipe goredis.Pipeliner, _ bool) []goredis.Cmder {
			close(holding)
			<-release
			return []goredis.Cmder{pipe.Ping(ctx)}
		})
		held <- err
	}()
	<-holding

	for _, borrowed := range []bool{false, true} {
		body := []byte(`{}`)
		if borrowed {
			body = make([]byte, bodybuf.Threshold) // cap at Threshold: the caller frees it once Admit returns
		}
		// 2 s for the admit, 5 s for the test to give up on it: an admit
		// that hangs, or answers only at its deadline, fails.
		actx, acancel := context.WithTimeout(context.WithValue(ctx, panicHere{}, true), 2*time.Second)
		done := make(chan error, 1)
		go func() {
			_, err := s.Admit(actx, &queue.Entry{Key: "panics", Body: body})
			done <- err
		}()
		wait, wcancel := context.WithTimeout(ctx, 5*time.Second)
		select {
		case err := <-done:
			if !errors.Is(err, errPanicked) {
				t.Errorf("borrowed %v: Admit in a batch whose pipeliner panicked: %v, want errPanicked", borrowed, err)
			}
		case <-wait.Done():
			t.Fatalf("borrowed %v: Admit in a batch whose pipeliner panicked never returned", borrowed)
		}
		wcancel()
		acancel()
	}
	if n := fired.Load(); n != 2 {
		t.Fatalf("the hook panicked %d times, want 2", n)
	}

	// The pipeliners still serve admits (the held call keeps them shared).
	for i := range 2 * pipeliners {
		e := &queue.Entry{Key: "after-" + strconv.Itoa(i), Body: []byte(`{}`)}
		if got, err := s.Admit(ctx, e); err != nil || got != queue.Accepted {
			t.Fatalf("Admit %d after the panics = %v, %v", i, got, err)
		}
	}
	close(release)
	if err := <-held; err != nil {
		t.Errorf("the held call: %v", err)
	}

	entries := logs.All()
	if len(entries) != 2 {
		t.Fatalf("logged %d errors, want 2 (one per panic): %v", len(entries), entries)
	}
	for _, e := range entries {
		f := e.ContextMap()
		if f["panic"] != "boom in the loop" || !strings.Contains(f["stack"].(string), "pipelineLoop") {
			t.Errorf("logged %q %v; want the panic and a stack through pipelineLoop", e.Message, f)
		}
	}
}

// A call handed to a pipeliner, whose caller has no deadline, stops
// waiting after answerTimeout should the pipeliner never answer.
func TestSendWaitBoundedWithoutDeadline(t *testing.T) {
	defer func(d time.Duration) { answerTimeout = d }(answerTimeout)
	answerTimeout = 20 * time.Millisecond
	r := &Store{calls: make(chan *pipeCall, 1), stop: make(chan struct{})}
	r.inflight.Add(1) // another call running: this one is handed over
	done := make(chan error, 1)
	go func() { done <- r.send(&pipeCall{ctx: context.Background()}) }()
	wait, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("send without an answer: %v, want a deadline error", err)
		}
	case <-wait.Done():
		t.Fatal("send without a deadline waited for an answer that never came")
	}
}
