// Package redis is the webhook relay's Redis store, http.webhook_relay.stores.redis:
// dedupe markers, the delivery queue and the dead letters of a relay kept in
// Redis, so that several Caddy instances can share them.
package redis

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
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
// Each destination's deliveries wait in a lane of their own (Store.Lane):
// a stream, its attempts and its retries, so that one lane's claims never
// look at another's entries. Lane "" has the keys below as named; lane L
// has them with ":L" appended ({p}:q:L, {p}:att:L, {p}:due:L).
//
// Keys, all under the hash tag {Prefix} so scripts work on Cluster:
//
//	{p}:q[:L]      stream of lane L's queued deliveries (XDEL'd when delivered, so XLEN is its backlog),
//	               read through the consumer group "relay"
//	{p}:att[:L]    hash: stream id -> last attempt of a queued delivery of lane L
//	{p}:due[:L]    sorted set: stream ids of lane L's deliveries waiting to be retried, by when due (Unix ms)
//	{p}:lanes      set of the lanes that ever had a stream (takeover, Stats and the backlog bound visit them)
//	{p}:ids        stream kept empty (MAXLEN 0), the one source of stream ids: every XADD to a lane takes
//	               its id from an XADD here, so ids are unique and rising across lanes
//	{p}:b:<pid>    the body of payload pid, shared by its deliveries, queued or dead, and its record
//	{p}:rc         hash: payload id -> deliveries queued or dead, for a payload fanned out or resent (no
//	               field: one; 0: none, its record holds the body alone)
//	{p}:h:<pid>    hash: the record of payload pid (history; fields: recordOf)
//	{p}:hist       sorted set of the payload ids that have a record, all scored 0 (lexical order is id order)
//	{p}:hdone      sorted set of the payload ids whose record is done, by when (Unix ms)
//	{p}:seen:<key> dedupe marker: its expiry time, and the token and stream id of the admit
//	               that set it (so that an admit can run twice), with a TTL >= the window
//	{p}:kc         hash: expiry minute -> markers set that expire in it (Stats.Keys)
//	{p}:in:<tok>   a body over inlineBodyMax on its way in: SET just before the admit script, which renames it
//	{p}:clm:<tok>  stream ids a claim handed out, for the visibility timeout, so that it can run twice
//	{p}:loc        hash: delivery id -> stream id, for replayed deliveries only
//	{p}:dead       sorted set of dead letter ids (lexical order is id order)
//	{p}:deadt      sorted set of dead letter ids by when they died (Unix ms)
//	{p}:dead:<id>  hash: one dead letter
//	{p}:sz         hash: payload id -> what it counts against max_stored; {p}:stored, their total (stored.go)
//	{p}:alive:<c>  consumer c's liveness key, with a short TTL (liveness.go)
//	{p}:lv         hash: consumers that keep a liveness key -> 1
//	{p}:rate:<d>   destination d's shared rate limit (ratelimit.Redis)
//	{p}:paused     set of the paused destinations (paused.go)
//
// A payload's id is the entry id of its stream id (formatID), the same in
// every lane it went to; a delivery's id is that id, or with several lanes
// the id, "~" and the lane (queue.DeliveryID), which such entries carry in
// their i field.
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

	// stream, att and due are lane ""'s keys, and the other lanes' prefixes
	stream, att, loc, due, deadIdx, deadTimes, deadPrefix, seenPrefix string
	bodyPrefix, stagedPrefix, claimPrefix, keyCount                   string
	lanes, ids, refs                                                  string
	recordPrefix, hist, hdone                                         string // see history.go
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

	// retryClaim is, by lane, the token of a claim whose reply never came,
	// though it may have run (Redis died after running it, a timeout): the
	// lane's next claim sends it again and gets what that one took, instead
	// of it waiting out the visibility timeout.
	claimMu    sync.Mutex
	retryClaim map[string]string

	// def is lane "", whose methods the store's own Claimer methods are.
	def *lane

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
		lanes:        tag + ":lanes",
		ids:          tag + ":ids",
		refs:         tag + ":rc",
		recordPrefix: tag + ":h:", // unrefLua names it after bodyPrefix
		hist:         tag + ":hist",
		hdone:        tag + ":hdone",
		retryClaim:   make(map[string]string),
		evicted:      opts.Evicted,
		aliveTTL:     cfg.LivenessTTL,
		aliveStop:    make(chan struct{}),
		replicas:     cfg.WaitReplicas,
		replicasWait: cfg.WaitReplicasTimeout,
	}
	r.def = &lane{r: r, stream: r.stream, att: r.att, due: r.due}
	r.bodies = semaphore.NewWeighted(bodyBytesInFlight)
	r.SetLimits(opts.Window, opts.MaxBacklog)
	r.SetMaxStored(opts.MaxStored)
	r.SetHistory(opts.History)
	if cfg.DurableAck {
		r.durable = cfg.DurableAckTimeout
	}
	r.calls, r.stop = make(chan *pipeCall), make(chan struct{})
	if err := r.def.ensureGroup(ctx); err != nil {
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
		forgetConsumerScript, livenessScript, releaseScript, attemptedScript, trimHistoryScript, resendScript} {
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

// ensureGroup creates the lane's stream and consumer group, if missing,
// and lists the lane among the lanes.
func (l *lane) ensureGroup(ctx context.Context) error {
	pipe := l.r.client.Pipeline()
	create := pipe.XGroupCreateMkStream(ctx, l.stream, groupName, "0")
	pipe.SAdd(ctx, l.r.lanes, l.name)
	_, _ = pipe.Exec(ctx)
	if err := create.Err(); err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("redis store: creating consumer group on %s: %w", l.stream, err)
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

// parseID returns the stream id a delivery id was made of, or "" for an
// id the store never made.
func parseID(id string) string {
	id = payloadOf(id)
	ms, seq, ok := strings.Cut(id, "-")
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return ""
	}
	return strconv.FormatUint(a, 10) + "-" + strconv.FormatUint(b, 10)
}

// payloadOf returns the id of the payload a delivery id belongs to.
func payloadOf(id string) string {
	payload, _, _ := strings.Cut(id, queue.DeliverySep)
	return payload
}

// fannedOut tells the id of one of a payload's several deliveries, whose
// body it shares with the others.
func fannedOut(id string) bool { return strings.Contains(id, queue.DeliverySep) }

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
	names, err := r.laneNames(ctx)
	if err != nil {
		return queue.Stats{}, fmt.Errorf("redis store: stats: %w", err)
	}
	pipe := r.client.Pipeline()
	lens := make([]*goredis.IntCmd, len(names))
	firsts := make([]*goredis.XMessageSliceCmd, len(names))
	for i, name := range names {
		l := r.laneOf(name)
		lens[i] = pipe.XLen(ctx, l.stream)
		firsts[i] = pipe.XRangeN(ctx, l.stream, "-", "+", 1)
	}
	dead := pipe.ZCard(ctx, r.deadIdx)
	counts := pipe.HGetAll(ctx, r.keyCount)
	stored := pipe.Get(ctx, r.stored)
	records := pipe.ZCard(ctx, r.hist)
	if _, err := pipe.Exec(ctx); err != nil && err != goredis.Nil {
		return queue.Stats{}, fmt.Errorf("redis store: stats: %w", err)
	}
	s := queue.Stats{Dead: int(dead.Val()), Records: int(records.Val())}
	s.Stored, _ = stored.Int64()
	for i, name := range names {
		n := int(lens[i].Val())
		if n == 0 {
			continue
		}
		s.Backlog += n
		if s.Lanes == nil {
			s.Lanes = make(map[string]int)
		}
		s.Lanes[name] = n
		// a lane's first entry is its oldest: replays join the back
		if msgs := firsts[i].Val(); len(msgs) > 0 {
			if u, ok := msgs[0].Values["u"].(string); ok {
				if t := unstamp(u); s.OldestQueued.IsZero() || t.Before(s.OldestQueued) {
					s.OldestQueued = t
				}
			}
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

// laneNames lists the lanes that ever had a stream, lane "" first.
func (r *Store) laneNames(ctx context.Context) ([]string, error) {
	names, err := r.client.SMembers(ctx, r.lanes).Result()
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	if len(names) == 0 || names[0] != "" {
		names = append([]string{""}, names...)
	}
	return names, nil
}

// forgetConsumerScript deletes this process's consumer from every lane's
// group, and from the consumers keeping a liveness key, when it holds
// nothing in any lane, so consumer names of past processes do not pile
// up. Its liveness key is left to expire: what it still holds is taken
// over then.
//
//	KEYS[1]  the lanes, {p}:lanes
//	KEYS[2]  the consumers keeping a liveness key, {p}:lv
//	ARGV[1]  the consumer group
//	ARGV[2]  this consumer
//	ARGV[3]  the stream key prefix, {p}:q
//	returns  1, or 0 when it still holds entries
var forgetConsumerScript = goredis.NewScript(laneLua + `
local streams = {}
for _, l in ipairs(lanesof(KEYS[1])) do
  local q = lanekey(ARGV[3], l)
  -- pcall: a lane whose stream or group is gone (Redis lost its data)
  local p = redis.pcall('XPENDING', q, ARGV[1], '-', '+', 1, ARGV[2])
  if not p.err then
    if #p > 0 then return 0 end
    streams[#streams+1] = q
  end
end
for _, q in ipairs(streams) do redis.call('XGROUP', 'DELCONSUMER', q, ARGV[1], ARGV[2]) end
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
	_ = forgetConsumerScript.Run(ctx, r.client, []string{r.lanes, r.liveSet}, groupName, r.consumer, r.stream).Err()
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
// forwarded for, r received, u queued, i the delivery's id (only on
// replayed entries, whose stream id is new, and on the deliveries of a
// payload fanned out, whose id names the lane), h the kept headers, t the
// destination, which is the lane (absent for ""), p and w the traceparent
// and tracestate (absent when the request had none).
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

// laneLua names a lane's keys as laneOf does, and lists the lanes that
// ever had a stream, lane "" always among them.
const laneLua = `
local function lanekey(base, lane)
  if lane == '' then return base end
  return base .. ':' .. lane
end
local function lanesof(set)
  local out = redis.call('SMEMBERS', set)
  if redis.call('SISMEMBER', set, '') == 0 then out[#out+1] = '' end
  return out
end
`
