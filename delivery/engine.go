// Package delivery forwards stored webhook payloads to the upstream in the
// background, retrying with backoff until the upstream answers 2xx, and
// moving what never gets through to the dead letters.
package delivery

import (
	"context"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/internal/faultlog"
	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/ratelimit"
)

// Settings are the delivery settings of one relay. A config reload may
// replace them while the engine runs; the queue stays.
type Settings struct {
	// Upstream is where payloads go; its own query is kept and the
	// payload's query is appended.
	Upstream *url.URL
	// Timeout bounds one attempt.
	Timeout time.Duration
	// Concurrency bounds attempts running at once.
	Concurrency int
	// Backoff is the retry schedule.
	Backoff Backoff
	// GiveUpAfter is how long after it was queued a payload that still
	// fails is moved to the dead letters.
	GiveUpAfter time.Duration
	// HeaderUp are extra headers on every forwarded request.
	HeaderUp http.Header
	// SignKey, if set, signs every attempt per Standard Webhooks.
	SignKey []byte
	// MaxDead bounds the dead letters kept (0: no bound); past it the
	// oldest are removed.
	MaxDead int
	// DeadRetention is how long a dead letter is kept (0: for ever).
	DeadRetention time.Duration
	// Limiter, if set, is asked before every attempt starts: at most
	// Rate's attempts start within any one unit (see rate.go). A limiter
	// shared by every instance on Redis, or one of this process.
	Limiter ratelimit.Limiter
	// Rate is the Limiter's rate, which bounds what the loop holds.
	Rate ratelimit.Rate
	// Destination names where payloads go, as the store's pauses know it
	// (queue.Pauses); empty is DefaultDestination.
	Destination string
	// Logger, if set, replaces Config.Logger: each config has its own log
	// outputs, and the engine follows the newest.
	Logger *zap.Logger
}

// Result names used for observers and metrics.
const (
	ResultSuccess = "success"
	ResultRetry   = "retry"
	ResultDead    = "dead"
)

// Config sets up an Engine.
type Config struct {
	// Store is the queue the engine delivers from.
	Store    queue.Claimer
	Settings *Settings
	Logger   *zap.Logger
	// Budget bounds the bodies held in memory, shared with the ack path:
	// a body is loaded from the store only for an attempt, once its bytes
	// fit. Nil: no bound.
	Budget *budget.Budget
	// Observe, if set, is called after every attempt with its result and
	// how long the upstream took.
	Observe func(result string, took time.Duration)
	// DeadDropped, if set, is called for every dead letter removed by
	// MaxDead or DeadRetention.
	DeadDropped func(e *queue.Entry)
	// Events, if set, is told of deliveries, dead letters and the
	// upstream's outages (events.go).
	Events Events
	// Relay names the relay in the events and on the attempt spans.
	Relay string
	// TrimInterval is how often dead letters are checked against
	// DeadRetention. Default 1m.
	TrimInterval time.Duration
	// PollInterval is how often the engine looks for payloads it was not
	// woken for (queued or given back to retry by another process, or
	// released), and asks the store again when the next retry is due.
	// Default 1s.
	PollInterval time.Duration
	// LeaseRefresh is how often held claims are extended. Default 10s.
	LeaseRefresh time.Duration
	// Transport overrides the HTTP transport (tests).
	Transport http.RoundTripper
	// BodyWait bounds how long an attempt waits for the transport to let
	// go of the request's body once the attempt is over; past it, the
	// transport's last Close frees the body. Default 10s (tests shorten
	// it).
	BodyWait time.Duration
	// Now and Jitter override the clock and the jitter source (tests).
	Now    func() time.Time
	Jitter func() float64
}

// Engine delivers the queue of one store. It claims a bounded number of
// due entries, attempts them with at most Concurrency attempts at once, and
// gives each failure back to the store, due again after the backoff: it
// holds only what it attempts, so failing payloads, however many, never
// block the others.
type Engine struct {
	cfg      Config
	store    safeStore // cfg.Store, its panics turned into errors
	settings atomic.Pointer[Settings]
	client   *http.Client
	wake     chan struct{}
	freed    chan freedPlace // an attempt is over: its concurrency place is free
	results  chan result     // an entry's bookkeeping is over
	inFlight atomic.Int64
	full     atomic.Bool                  // holding as many entries as it may
	pause    pauseView                    // the destination's pause, as last read (pause.go)
	tracer   atomic.Pointer[tracerHolder] // the attempt spans' provider (tracing.go)
	claimErr faultlog.Tracker
	bodyErr  faultlog.Tracker
	// recordErr: attempts that could not be recorded in the history
	recordErr faultlog.Tracker
	trimErr   faultlog.Tracker
	rateErr   faultlog.Tracker
	trimming  atomic.Bool    // a trim of the dead letters is running
	trimMore  atomic.Bool    // asked for while one was running: run again
	trims     sync.WaitGroup // running trims, waited for by Stop
	// trimsMu orders a trim's start (trims.Add, from an attempt that just
	// made a dead letter) before Stop's wait: none starts once trimsDone.
	trimsMu   sync.Mutex
	trimsDone bool

	ctx       context.Context // ends the claim loop
	stop      context.CancelFunc
	attemptCx context.Context // ends running attempts, after the grace
	abort     context.CancelFunc
	done      chan struct{}
}

// storeTimeout bounds one bookkeeping call to the store.
const storeTimeout = 10 * time.Second

// Start starts delivering.
func Start(cfg Config) *Engine {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.LeaseRefresh <= 0 {
		cfg.LeaseRefresh = 10 * time.Second
	}
	if cfg.TrimInterval <= 0 {
		cfg.TrimInterval = time.Minute
	}
	if cfg.BodyWait <= 0 {
		cfg.BodyWait = sentBodiesWait
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Jitter == nil {
		cfg.Jitter = randomJitter
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	transport := cfg.Transport
	if transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 256
		transport = t
	}
	e := &Engine{
		cfg: cfg,
		client: &http.Client{
			Transport: transport,
			// A redirect is reported as what it is, not followed: the
			// upstream URL is the operator's to fix.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		wake:    make(chan struct{}, 1),
		freed:   make(chan freedPlace),
		results: make(chan result),
		done:    make(chan struct{}),
	}
	e.settings.Store(cfg.Settings)
	e.store = safeStore{store: cfg.Store, log: func() *zap.Logger { return e.logger(e.settings.Load()) }}
	e.ctx, e.stop = context.WithCancel(context.Background())
	e.attemptCx, e.abort = context.WithCancel(context.Background())
	go e.run()
	return e
}

// SetSettings replaces the delivery settings; entries already queued go to
// the new upstream.
func (e *Engine) SetSettings(s *Settings) { e.settings.Store(s) }

// Wake tells the engine that something was queued. It never blocks, and
// costs nothing while the engine holds all it may: it looks for more as
// soon as a place frees up anyway.
func (e *Engine) Wake() {
	e.pause.stale.Store(true) // a pause or resume also wakes it
	if e.full.Load() {
		return
	}
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// InFlight reports how many attempts are running now.
func (e *Engine) InFlight() int { return int(e.inFlight.Load()) }

// Stop stops claiming, lets running attempts finish for up to grace, then
// cancels them, and gives every entry it still holds back to the store.
// Nothing is lost: what was not delivered stays queued.
func (e *Engine) Stop(grace time.Duration) {
	e.stop()
	t := time.AfterFunc(grace, e.abort)
	<-e.done
	t.Stop()
	e.abort()
	e.trimsMu.Lock()
	e.trimsDone = true
	e.trimsMu.Unlock()
	e.trims.Wait()
}

// run is the engine's goroutine: the loop's rounds until Stop, then its
// drain. A panic in a round is logged with its stack; the loop puts itself
// back in order and goes on after the next poll, so the relay keeps
// delivering what it holds and what is queued.
func (e *Engine) run() {
	defer close(e.done)
	l := newLoop(e)
	defer l.stopTimers()
	e.trimDead()
	for !l.serve() {
		l.rebuild()
		if !l.pause() {
			break
		}
	}
	guard.Run(e.logger(e.settings.Load()), "the delivery loop's shutdown", l.drain)
}

// logger is the newest config's logger.
func (e *Engine) logger(s *Settings) *zap.Logger {
	if s != nil && s.Logger != nil {
		return s.Logger
	}
	return e.cfg.Logger
}

// observe reports an attempt to Config.Observe. A panic in it is logged and
// changes nothing for the entry.
func (e *Engine) observe(log *zap.Logger, result string, took time.Duration) {
	if e.cfg.Observe != nil {
		guard.Run(log, "the delivery observer", func() { e.cfg.Observe(result, took) })
	}
}
