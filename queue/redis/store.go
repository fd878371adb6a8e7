// Package redis is the webhook relay's Redis store, http.webhook_relay.stores.redis:
// dedupe markers, the delivery queue and the dead letters of a relay kept in
// Redis, so that several Caddy instances can share them.
package redis

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/hookrelay/caddy-webhook-relay/internal/faultlog"
	"github.com/hookrelay/caddy-webhook-relay/queue"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

// Store is a queue.Store kept in Redis, shared by every Caddy instance pointing at
// the same Redis and relay: the queue is a stream read through a consumer
// group, so each instance delivers its share and takes over the entries of
// an instance that died.
//
// Keys, all under the hash tag {Prefix} so scripts work on Cluster:
//
//	{p}:q          stream of queued entries (XDEL'd when delivered, so XLEN is the backlog)
//	{p}:b:<id>     the body of a queued entry or dead letter, by entry id
//	{p}:seen:<key> dedupe marker: its expiry time, and the token and stream id of the admit
//	               that set it (so that an admit can run twice), with a TTL >= the window
//	{p}:kc         hash: expiry minute -> markers set that expire in it (Stats.Keys)
//	{p}:in:<tok>   a body over inlineBodyMax on its way in: SET just before the admit script, which renames it
//	{p}:clm:<tok>  stream ids a claim handed out, for the visibility timeout, so that it can run twice
//	{p}:att        hash: stream id -> last attempt of a queued entry
//	{p}:loc        hash: entry id -> stream id, for replayed entries only
//	{p}:due        sorted set: stream ids of entries waiting to be retried, by when they are due (Unix ms)
//	{p}:dead       sorted set of dead letter ids (lexical order is id order)
//	{p}:deadt      sorted set of dead letter ids by when they died (Unix ms)
//	{p}:dead:<id>  hash: one dead letter
//	{p}:alive:<c>  consumer c's liveness key, with a short TTL (liveness.go)
//	{p}:lv         hash: consumers that keep a liveness key -> 1
//	{p}:rate:<d>   destination d's shared rate limit (ratelimit.Redis)
//	{p}:paused     set of the paused destinations (paused.go)
//
// Bodies have keys of their own so that claims, replays and listings, which
// run as scripts or touch many entries, never carry them.
//
// It is as durable as the Redis it points at: run Redis with AOF
// (appendfsync everysec or always) and maxmemory-policy noeviction.
type Store struct {
	client goredis.UniversalClient
	log    *zap.Logger
	now    func() time.Time
	queue.Limits
	consumer string
	idle     time.Duration
	durable  time.Duration // WAITAOF timeout; 0: do not wait
	// replicas is how many replicas must have an admit before it is
	// Accepted (WAIT), within replicasWait; 0: do not wait
	replicas     int
	replicasWait time.Duration
	closed       atomic.Bool
	calls        chan *pipeCall      // to the pipeliners
	inflight     atomic.Int64        // script calls running now
	bodies       *semaphore.Weighted // body bytes on their way to or from Redis; see takeBodyBytes
	stop         chan struct{}       // closed by Close

	stream, att, loc, due, deadIdx, deadTimes, deadPrefix, seenPrefix string
	bodyPrefix, stagedPrefix, claimPrefix, keyCount                   string
	alivePrefix, liveSet                                              string
	sizes, stored                                                     string // see stored.go
	ratePrefix                                                        string // see ratelimit.go
	paused                                                            string // see paused.go

	// evicted is queue.Options.Evicted.
	evicted func(n int)

	// aliveTTL is the liveness key's TTL; aliveStop, closed by stopAlive,
	// stops renewing it (Close, and tests).
	aliveTTL  time.Duration
	aliveStop chan struct{}
	aliveOnce sync.Once
	aliveErr  faultlog.Tracker

	// retryClaim is the token of a claim whose reply never came, though it
	// may have run (Redis died after running it, a timeout): the next claim
	// sends it again and gets what that one took, instead of it waiting
	// out the visibility timeout.
	claimMu    sync.Mutex
	retryClaim string

	// dialFailing is set by a failed dial and cleared by the next answer,
	// which sets cameBack (Unix ns): see Admit.
	dialFailing atomic.Bool
	cameBack    atomic.Int64

	// moved maps the ids of replayed entries this process holds to their
	// stream ids; every other queued entry's stream id is its id's.
	movedMu sync.Mutex
	moved   map[string]string
}

// Config sets up a Redis store beyond the relay's Options.
type Config struct {
	// Prefix names the relay's keys, e.g. "webhook_relay:default"; they all
	// share the hash tag {Prefix}. Required.
	Prefix string
	// Consumer is this process's name in the consumer group; it must be
	// unique among the processes sharing the Redis and stay the same for
	// the life of the process. Default: DefaultConsumer().
	Consumer string
	// VisibilityTimeout is how long an entry claimed by a consumer that
	// stopped extending it stays with that consumer before another one
	// takes it over. Default 60s.
	VisibilityTimeout time.Duration
	// DurableAck makes Admit wait until Redis has written the entry to its
	// append-only file (WAITAOF, Redis >= 7.2 with appendonly yes) before
	// it reports Accepted or Duplicate.
	DurableAck bool
	// DurableAckTimeout bounds that wait; past it Admit fails. Default 1s.
	DurableAckTimeout time.Duration
	// WaitReplicas makes Admit wait until this many replicas have the
	// entry (WAIT) before it reports Accepted or Duplicate; fewer within
	// WaitReplicasTimeout fail the admit. 0: do not wait.
	WaitReplicas int
	// WaitReplicasTimeout bounds that wait. Default 1s.
	WaitReplicasTimeout time.Duration
	// LivenessTTL is the TTL of the key that tells the other instances this
	// one is alive; renewed every third of it. When it expires they take
	// over what this one holds. Default DefaultLivenessTTL.
	LivenessTTL time.Duration
	// Logger gets the warnings about the server's settings, and the panics
	// the store recovers from.
	Logger *zap.Logger
}

// DefaultVisibilityTimeout is how long a claimed entry whose consumer has
// gone quiet stays with it.
const DefaultVisibilityTimeout = 60 * time.Second

// groupName is the consumer group every relay instance reads through.
const groupName = "relay"

// releasedIdle is the idle time Release gives entries: past any visibility
// timeout, so the next Claim anywhere takes them.
const releasedIdle = 365 * 24 * time.Hour

// DefaultConsumer is a consumer name unique to this process: host name and
// process id.
func DefaultConsumer() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "caddy"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

// New opens the store on client, which it owns from now on: Close
// closes it. It creates the consumer group if needed, warns unless Redis
// evicts nothing, and with DurableAck checks that the server can wait for
// its AOF. It fails if Redis cannot be reached.
func New(ctx context.Context, client goredis.UniversalClient, cfg Config, opts queue.Options) (*Store, error) {
	if cfg.Prefix == "" {
		return nil, errors.New("redis store: empty key prefix")
	}
	if cfg.Consumer == "" {
		cfg.Consumer = DefaultConsumer()
	}
	if cfg.VisibilityTimeout <= 0 {
		cfg.VisibilityTimeout = DefaultVisibilityTimeout
	}
	if cfg.DurableAckTimeout <= 0 {
		cfg.DurableAckTimeout = time.Second
	}
	if cfg.WaitReplicasTimeout <= 0 {
		cfg.WaitReplicasTimeout = time.Second
	}
	if cfg.LivenessTTL <= 0 {
		cfg.LivenessTTL = DefaultLivenessTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	tag := "{" + cfg.Prefix + "}"
	r := &Store{
		client:       client,
		log:          cfg.Logger,
		now:          opts.Clock(),
		consumer:     cfg.Consumer,
		idle:         cfg.VisibilityTimeout,
		stream:       tag + ":q",
		att:          tag + ":att",
		loc:          tag + ":loc",
		due:          tag + ":due",
		deadIdx:      tag + ":dead",
		deadTimes:    tag + ":deadt",
		deadPrefix:   tag + ":dead:",
		seenPrefix:   tag + ":seen:",
		bodyPrefix:   tag + ":b:",
		stagedPrefix: tag + ":in:",
		claimPrefix:  tag + ":clm:",
		keyCount:     tag + ":kc",
		alivePrefix:  tag + ":alive:",
		liveSet:      tag + ":lv",
		sizes:        tag + ":sz",
		stored:       tag + ":stored",
		ratePrefix:   tag + ":rate:",
		paused:       tag + ":paused",
		evicted:      opts.Evicted,
		aliveTTL:     cfg.LivenessTTL,
		aliveStop:    make(chan struct{}),
		replicas:     cfg.WaitReplicas,
		replicasWait: cfg.WaitReplicasTimeout,
	}
	r.bodies = semaphore.NewWeighted(bodyBytesInFlight)
	r.SetLimits(opts.Window, opts.MaxBacklog)
	r.SetMaxStored(opts.MaxStored)
	if cfg.DurableAck {
		r.durable = cfg.DurableAckTimeout
	}
	r.calls, r.stop = make(chan *pipeCall), make(chan struct{})
	if err := r.ensureGroup(ctx); err != nil {
		if !unreachable(err) || cfg.DurableAck {
			// durable_ack must be checked against the server before the
			// first 200 it would qualify, so it needs Redis at start.
			return nil, err
		}
		// Refusing to start would take the whole Caddy down with Redis.
		// Running answers 503 (the sender retries) until Redis is back; the
		// group and the scripts are then created on first use.
		cfg.Logger.Error("Redis is unreachable: webhooks are answered 503 until it is back", zap.Error(err))
		for range pipeliners {
			go r.pipeliner()
		}
		go r.keepAlive(false)
		return r, nil
	}
	if err := checkVersion(ctx, client, cfg.Logger); err != nil {
		return nil, err
	}
	checkEviction(ctx, client, cfg.Logger)
	if cfg.DurableAck {
		if err := checkWaitAOF(ctx, client); err != nil {
			return nil, err
		}
	}
	// load every script now, so the first requests need no fallback
	for _, s := range []*goredis.Script{admitScript, claimScript, reclaimScript, retryScript,
		ackScript, buryScript, replayScript, deleteDeadScript, trimDeadScript,
		forgetConsumerScript, livenessScript, unstoreScript} {
		if err := s.Load(ctx, client).Err(); err != nil {
			return nil, fmt.Errorf("redis store: loading scripts: %w", err)
		}
	}
	for range pipeliners {
		go r.pipeliner()
	}
	// the first round runs before New returns, so this consumer is alive
	// before it claims anything
	r.liveness(ctx)
	go r.keepAlive(true)
	return r, nil
}

// unreachable tells a Redis that did not answer (network, timeout) from one
// that answered with an error (wrong password, no permission, bad config),
// which is worth failing the config for.
func unreachable(err error) bool {
	var reply goredis.Error
	return !errors.As(err, &reply)
}

func (r *Store) ensureGroup(ctx context.Context) error {
	err := r.client.XGroupCreateMkStream(ctx, r.stream, groupName, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("redis store: creating consumer group on %s: %w", r.stream, err)
	}
	return nil
}

// checkEviction warns unless Redis is set to evict nothing: an evicted
// stream or marker is a lost webhook or a duplicate delivery.
func checkEviction(ctx context.Context, client goredis.UniversalClient, log *zap.Logger) {
	const why = "Redis may evict keys under memory pressure: queued webhooks that were answered 200 " +
		"would be LOST and dedupe markers forgotten; set maxmemory-policy noeviction"
	cfg, err := client.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		log.Warn("cannot read maxmemory-policy (CONFIG may be disabled); make sure it is noeviction", zap.Error(err))
		return
	}
	if policy := cfg["maxmemory-policy"]; policy != "noeviction" {
		log.Warn(why, zap.String("maxmemory-policy", policy))
	}
}

// checkWaitAOF makes sure the server can honour durable_ack: WAITAOF exists
// (Redis >= 7.2) and appendonly is on.
func checkWaitAOF(ctx context.Context, client goredis.UniversalClient) error {
	err := client.Do(ctx, "WAITAOF", 1, 0, 100).Err()
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "unknown command"):
		return fmt.Errorf("redis store: durable_ack needs WAITAOF, which this Redis lacks (Redis >= 7.2 has it); " +
			"upgrade Redis or turn durable_ack off and rely on appendfsync")
	case strings.Contains(strings.ToLower(msg), "appendonly"):
		return fmt.Errorf("redis store: durable_ack needs appendonly yes on the Redis server: %w", err)
	}
	return fmt.Errorf("redis store: checking WAITAOF for durable_ack: %w", err)
}

func (r *Store) usable(ctx context.Context) error {
	if r.closed.Load() {
		return queue.ErrClosed
	}
	return ctx.Err()
}

// formatID makes an entry id of a stream id: fixed width, so ids sort as
// strings in admission order.
func formatID(sid string) (string, error) {
	ms, seq, ok := strings.Cut(sid, "-")
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return "", fmt.Errorf("redis store: unexpected stream id %q", sid)
	}
	return fmt.Sprintf("%016d-%010d", a, b), nil
}

// parseID returns the stream id an entry id was made of, or "" for an id
// the store never made.
func parseID(id string) string {
	ms, seq, ok := strings.Cut(id, "-")
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return ""
	}
	return strconv.FormatUint(a, 10) + "-" + strconv.FormatUint(b, 10)
}

// stamp writes a time as fixed-width Unix nanoseconds, which compare as
// strings in Lua.
func stamp(t time.Time) string { return fmt.Sprintf("%020d", t.UnixNano()) }

func unstamp(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// bytesOf turns a reply into a body without copying it again. go-redis
// reads each bulk reply into a buffer of its own and makes the string over
// it (proto.Reader.readStringReply), so nothing else refers to that memory:
// the slice is the caller's to keep. Small ones are copied, in case a
// string of a byte or two ever comes from a shared table.
func bytesOf(s string) []byte {
	if len(s) < 64 {
		return []byte(s)
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// smallCall is what a call without a body counts for in a shared pipeline.
const smallCall = 256

// Stats implements Store; it only reads. Keys counts the markers by the
// minute they expire in, so a marker counts until the end of that minute;
// the minutes gone by are skipped (the admit script deletes them).
func (r *Store) Stats(ctx context.Context) (queue.Stats, error) {
	if err := r.usable(ctx); err != nil {
		return queue.Stats{}, err
	}
	pipe := r.client.Pipeline()
	backlog := pipe.XLen(ctx, r.stream)
	dead := pipe.ZCard(ctx, r.deadIdx)
	first := pipe.XRangeN(ctx, r.stream, "-", "+", 1)
	counts := pipe.HGetAll(ctx, r.keyCount)
	stored := pipe.Get(ctx, r.stored)
	if _, err := pipe.Exec(ctx); err != nil && err != goredis.Nil {
		return queue.Stats{}, fmt.Errorf("redis store: stats: %w", err)
	}
	s := queue.Stats{Backlog: int(backlog.Val()), Dead: int(dead.Val())}
	s.Stored, _ = stored.Int64()
	if msgs := first.Val(); len(msgs) > 0 {
		if u, ok := msgs[0].Values["u"].(string); ok {
			s.OldestQueued = unstamp(u)
		}
	}
	minute := r.now().UnixMilli() / 60000
	for field, n := range counts.Val() {
		if m, err := strconv.ParseInt(field, 10, 64); err == nil && m >= minute {
			c, _ := strconv.Atoi(n)
			s.Keys += c
		}
	}
	return s, nil
}

// forgetConsumerScript deletes this process's consumer from the group, and
// from the consumers keeping a liveness key, when it holds nothing, so
// consumer names of past processes do not pile up. Its liveness key is left
// to expire: what it still holds is taken over then.
//
//	KEYS[1]  the stream, {p}:q
//	KEYS[2]  the consumers keeping a liveness key, {p}:lv
//	ARGV[1]  the consumer group
//	ARGV[2]  this consumer
//	returns  1, or 0 when it still holds entries
var forgetConsumerScript = goredis.NewScript(`
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
`)

// Close implements Store: it stops renewing the liveness key and closes the
// client. What this process holds stays pending and is taken over when the
// liveness key expires (the engine releases it first at a clean shutdown).
// A consumer holding nothing is removed from the group.
func (r *Store) Close() error {
	if !r.closed.CompareAndSwap(false, true) {
		return queue.ErrClosed
	}
	close(r.stop)
	r.stopAlive()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = forgetConsumerScript.Run(ctx, r.client, []string{r.stream, r.liveSet}, groupName, r.consumer).Err()
	return r.client.Close()
}

// Interface guard
var _ queue.Store = (*Store)(nil)

// The store's Lua scripts stand beside the methods that run them, each
// with its KEYS and ARGV. Each runs atomically on the server; all the keys
// one touches share the relay's hash tag, so they work on Cluster. Keys
// named after an entry id the caller does not know yet (a body key in admit
// and claim, dead letters in TrimDead) are built in the script from a
// prefix in ARGV; they share the hash tag too. Times are stamps: 20-digit
// Unix nanoseconds, which compare as strings.
//
// Stream entry fields: k key, q raw query, c content type, a user agent, x
// forwarded for, r received, u queued, i the entry's original id (only on
// replayed entries), h the kept headers, t the destination (absent when
// the relay gave none), p and w the traceparent and tracestate (absent
// when the request had none).
// A dead letter hash has the same fields plus i, and n attempts, s last
// status, e last error, d died.

// resolveLua resolves an entry id to its stream id: the stream id written
// in the id (entries never replayed, passed in as parsed), or the one in
// the location hash (replayed entries, which got a new stream id).
const resolveLua = `
local function resolve(loc, id, parsed)
  local sid = redis.call('HGET', loc, id)
  if sid then return sid end
  return parsed
end
`

// idLua makes an entry id of a stream id as formatID does, or nil.
const idLua = `
local function entryid(sid)
  local ms, seq = string.match(sid, '^(%d+)-(%d+)$')
  if not ms then return nil end
  return string.format('%016d-%010d', tonumber(ms), tonumber(seq))
end
`

// Lane implements queue.Store. TODO(fan-out): one queue per destination.
func (r *Store) Lane(destination string) queue.Claimer { return r }
