package redis

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/hookrelay/caddy-webhook-relay/queue"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"
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
//	{p}:in:<tok>   a large body on its way in: SET just before the admit script, which renames it
//	{p}:clm:<tok>  stream ids a claim handed out, for the visibility timeout, so that it can run twice
//	{p}:att        hash: stream id -> last attempt of a queued entry
//	{p}:loc        hash: entry id -> stream id, for replayed entries only
//	{p}:dead       sorted set of dead letter ids (lexical order is id order)
//	{p}:deadt      sorted set of dead letter ids by when they died (Unix ms)
//	{p}:dead:<id>  hash: one dead letter
//
// Bodies have keys of their own so that claims, replays and listings, which
// run as scripts or touch many entries, never carry them. Data written
// before that kept the body in the stream entry's and the dead letter's
// field b; reads fall back to it.
//
// It is as durable as the Redis it points at: run Redis with AOF
// (appendfsync everysec or always) and maxmemory-policy noeviction.
type Store struct {
	client goredis.UniversalClient
	now    func() time.Time
	queue.Limits
	consumer string
	idle     time.Duration
	durable  time.Duration // WAITAOF timeout; 0: do not wait
	closed   atomic.Bool
	calls    chan *pipeCall // to the pipeliners
	inflight atomic.Int64   // script calls running now
	stop     chan struct{}  // closed by Close

	stream, att, loc, deadIdx, deadTimes, deadPrefix, seenPrefix string
	bodyPrefix, stagedPrefix, claimPrefix, keyCount              string

	// backfill serializes filling {p}:deadt in for legacy dead letters.
	backfill sync.Mutex

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
	// it reports Accepted.
	DurableAck bool
	// DurableAckTimeout bounds that wait; past it Admit fails. Default 1s.
	DurableAckTimeout time.Duration
	// Logger gets the warnings about the server's settings.
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
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	tag := "{" + cfg.Prefix + "}"
	r := &Store{
		client:       client,
		now:          opts.Clock(),
		consumer:     cfg.Consumer,
		idle:         cfg.VisibilityTimeout,
		stream:       tag + ":q",
		att:          tag + ":att",
		loc:          tag + ":loc",
		deadIdx:      tag + ":dead",
		deadTimes:    tag + ":deadt",
		deadPrefix:   tag + ":dead:",
		seenPrefix:   tag + ":seen:",
		bodyPrefix:   tag + ":b:",
		stagedPrefix: tag + ":in:",
		claimPrefix:  tag + ":clm:",
		keyCount:     tag + ":kc",
	}
	r.SetLimits(opts.Window, opts.MaxBacklog)
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
		return r, nil
	}
	for range pipeliners {
		go r.pipeliner()
	}
	checkEviction(ctx, client, cfg.Logger)
	if cfg.DurableAck {
		if err := checkWaitAOF(ctx, client); err != nil {
			return nil, err
		}
	}
	// load every script now, so the first requests need no fallback
	for _, s := range []*goredis.Script{admitScript, claimScript, reclaimScript, attemptedScript,
		ackScript, buryScript, replayScript, moveBodyScript, deleteDeadScript, trimDeadScript,
		backfillDeadScript, forgetConsumerScript} {
		if err := s.Load(ctx, client).Err(); err != nil {
			return nil, fmt.Errorf("redis store: loading scripts: %w", err)
		}
	}
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

// stagedTTL bounds how long a body written for an admit outlives an admit
// script that never ran.
const stagedTTL = time.Minute

// inlineBodyMax is the largest body that travels inside the admit script,
// as an argument it SETs into place itself: one command for Redis to run
// instead of a SET before the script and a RENAME and a PERSIST in it. But
// a script's arguments are copied into Lua, and what it SETs is copied
// again, while a plain SET stores the body as Redis read it: past a few KiB
// the copies cost Redis more than the commands saved, and for a body of
// megabytes they would hold it for tens of milliseconds in one step.
// BenchmarkRedisAdmitBody on the 2-CPU machine (Redis 7.0, AOF everysec,
// 16 admits at a time), Redis's CPU per admit inline vs staged: 300 B 43.0
// vs 51.9 µs, 2 KiB 61.2 vs 64.1, 4 KiB 89.4 vs 83.5 (other runs: the
// other way round), 8 KiB 158 vs 151, 16 KiB 249 vs 234, 64 KiB 872 vs 788.
// (A variable only so that the benchmark can move it.)
var inlineBodyMax = 4 << 10

// markerTTLMin is the shortest TTL a marker gets: the marker also records
// the admit that set it, by token, so that an admit run twice within this
// time answers Accepted with the same id, however short the window.
const markerTTLMin = 20 * time.Second

// admitCall returns the commands of an admit of e under token: the admit
// script, with the body as its last argument when it is at most
// inlineBodyMax, or else after a plain SET of the body under a staging
// key, which the script renames into place.
func (r *Store) admitCall(e *queue.Entry, token string, now time.Time) func(goredis.Pipeliner, bool) []goredis.Cmder {
	window := r.Window()
	expires := now.Add(window)
	ttl := max(window, markerTTLMin).Milliseconds() + 1000 // never shorter than the window
	keys := []string{r.stream, r.seenPrefix + e.Key, r.keyCount}
	args := []any{stamp(now), stamp(expires), ttl, r.MaxBacklog(),
		e.Key, e.Request.RawQuery, e.Request.ContentType, e.Request.UserAgent, e.Request.ForwardedFor,
		r.bodyPrefix, expires.UnixMilli() / 60000, token}
	staged := ""
	if len(e.Body) <= inlineBodyMax {
		args = append(args, e.Body)
	} else {
		staged = r.stagedPrefix + token
		keys = append(keys, staged)
	}
	return func(pipe goredis.Pipeliner, eval bool) []goredis.Cmder {
		ctx := context.Background() // the pipeline's context is the one that counts
		var cmds []goredis.Cmder
		if staged != "" {
			cmds = append(cmds, pipe.Set(ctx, staged, e.Body, stagedTTL))
		}
		if eval {
			return append(cmds, admitScript.Eval(ctx, pipe, keys, args...))
		}
		return append(cmds, admitScript.EvalSha(ctx, pipe, keys, args...))
	}
}

// admitReply is the admit script's reply among an admit's commands, the
// last of them.
func admitReply(cmds []goredis.Cmder) ([]any, error) {
	for _, c := range cmds[:len(cmds)-1] {
		if err := c.Err(); err != nil {
			return nil, fmt.Errorf("writing the body: %w", err)
		}
	}
	v, err := cmds[len(cmds)-1].(*goredis.Cmd).Result()
	if err != nil {
		return nil, err
	}
	if res, _ := v.([]any); len(res) > 0 {
		return res, nil
	}
	return nil, fmt.Errorf("unexpected reply %v", v)
}

// Admit implements Store. Each call has its own token, so that the script
// running twice (a reply lost and the pipeline sent again, a failover)
// answers Accepted with the same id the second time, never Duplicate.
func (r *Store) Admit(ctx context.Context, e *queue.Entry) (queue.Admission, error) {
	if err := r.usable(ctx); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, queue.AdmitTimeout)
	defer cancel()
	now := r.now()
	enqueue := r.admitCall(e, rand.Text(), now)
	size := smallCall + len(e.Body) + len(e.Key) + len(e.Request.RawQuery) + len(e.Request.ForwardedFor) +
		len(e.Request.UserAgent) + len(e.Request.ContentType)
	admit := func() ([]any, error) {
		if r.durable > 0 {
			return r.admitDurable(ctx, enqueue)
		}
		cmds, err := r.runCmds(ctx, size, enqueue)
		if err != nil {
			return nil, err
		}
		return admitReply(cmds)
	}
	res, err := admit()
	// A dial that failed sent nothing, so the admit may be tried again. Just
	// after Redis came back, go-redis fails some dials at once for up to a
	// second (until its probe sees Redis): wait that out rather than answer
	// 503 to a sender whose neighbours get 200s. While Redis is down, fail
	// at once.
	for retried := time.Now(); err != nil && dialFailed(err) && r.comingBack() &&
		time.Since(retried) < comingBackRetry && ctx.Err() == nil; {
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
		res, err = admit()
	}
	if err != nil {
		return 0, fmt.Errorf("redis store: admit: %w", err)
	}
	switch code, _ := res[0].(int64); code {
	case 1:
		return queue.Duplicate, nil
	case 2:
		return 0, queue.ErrBacklogFull
	case 3:
		return 0, errors.New("redis store: admit: the body did not reach Redis; nothing was stored")
	}
	var sid string
	if len(res) > 1 {
		sid, _ = res[1].(string)
	}
	id, err := formatID(sid)
	if err != nil {
		return 0, err
	}
	e.ID, e.Received, e.Queued = id, now, now
	return queue.Accepted, nil
}

// comingBackRetry bounds how long an admit retries failed dials after Redis
// came back: go-redis probes a server it cannot dial once a second.
const comingBackRetry = 1500 * time.Millisecond

// dialFailed tells an error of a connection that was never made, so
// nothing was sent.
func dialFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// answered records how a round trip went, for comingBack.
func (r *Store) answered(err error) {
	switch {
	case err == nil || !unreachable(err):
		if r.dialFailing.Swap(false) {
			r.cameBack.Store(time.Now().UnixNano())
		}
	case dialFailed(err):
		r.dialFailing.Store(true)
	}
}

// comingBack tells whether Redis answered, after failed dials, within the
// last two seconds.
func (r *Store) comingBack() bool {
	return time.Now().UnixNano()-r.cameBack.Load() < int64(2*time.Second)
}

// admitDurable runs the admit's commands and WAITAOF in one pipeline:
// WAITAOF waits for the writes of its own connection, so all must share one.
func (r *Store) admitDurable(ctx context.Context, enqueue func(goredis.Pipeliner, bool) []goredis.Cmder) ([]any, error) {
	run := func(eval bool) ([]goredis.Cmder, *goredis.Cmd) {
		pipe := r.client.Pipeline()
		cmds := enqueue(pipe, eval)
		wait := pipe.Do(ctx, "WAITAOF", 1, 0, r.durable.Milliseconds())
		_, err := pipe.Exec(ctx)
		r.answered(err)
		return cmds, wait
	}
	cmds, wait := run(false)
	if goredis.HasErrorPrefix(cmds[len(cmds)-1].Err(), "NOSCRIPT") {
		cmds, wait = run(true)
	}
	res, err := admitReply(cmds)
	if err != nil {
		return nil, err
	}
	if code, _ := res[0].(int64); code != 0 {
		return res, nil // nothing was written
	}
	acks, err := wait.Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("waiting for the AOF fsync: %w", err)
	}
	if len(acks) == 0 || acks[0] < 1 {
		return nil, fmt.Errorf("the AOF was not fsynced within %s (the payload is in Redis memory; the sender's retry will be a duplicate)", r.durable)
	}
	return res, nil
}

// claimArgs are the claim script's keys and arguments.
func (r *Store) claimArgs(max int, token string) ([]string, []any) {
	return []string{r.stream, r.att, r.claimPrefix + token},
		[]any{groupName, r.consumer, r.idle.Milliseconds(), max, r.bodyPrefix, releasedIdle.Milliseconds()}
}

// claimToken returns the token of the claim to send again, or a new one.
func (r *Store) claimToken() string {
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	token := r.retryClaim
	r.retryClaim = ""
	if token == "" {
		token = rand.Text()
	}
	return token
}

// Claim implements Store. It first takes over entries idle past the
// visibility timeout (a dead consumer's, or released ones), then reads new
// ones. Bodies stay in Redis: Body fetches them.
func (r *Store) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, nil
	}
	token := r.claimToken()
	keys, args := r.claimArgs(max, token)
	run := func() ([]any, error) {
		return claimScript.Run(ctx, r.client, keys, args...).Slice()
	}
	res, err := run()
	if isNoGroup(err) { // Redis lost its data: start over with a new group
		if err = r.ensureGroup(ctx); err == nil {
			res, err = run()
		}
	}
	r.answered(err)
	if err != nil {
		if unreachable(err) { // it may have run: the next claim sends it again
			r.claimMu.Lock()
			r.retryClaim = token
			r.claimMu.Unlock()
		}
		return nil, fmt.Errorf("redis store: claim: %w", err)
	}
	out := make([]*queue.Entry, 0, len(res))
	for _, item := range res {
		if e := r.claimed(item); e != nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// claimed makes an entry of one item of the claim script's reply. What it
// cannot read comes back Damaged, under the id of its stream id, which Bury
// finds it by; nil only for an item without a stream id.
func (r *Store) claimed(item any) *queue.Entry {
	parts, _ := item.([]any)
	var sid string
	if len(parts) > 0 {
		sid, _ = parts[0].(string)
	}
	sidID, err := formatID(sid)
	if err != nil {
		return nil
	}
	damaged := func(why string) *queue.Entry { return &queue.Entry{ID: sidID, Damaged: why} }
	if len(parts) < 4 {
		return damaged(fmt.Sprintf("unexpected claim reply %v", item))
	}
	fields, err := fieldMap(parts[1])
	if err != nil {
		return damaged(err.Error())
	}
	e, err := entryOf(sid, fields)
	if err != nil {
		return damaged(err.Error())
	}
	if parseID(e.ID) == "" {
		e.Damaged = fmt.Sprintf("stream entry %s has a malformed entry id %q", sid, e.ID)
		e.ID = sidID
	} else if parseID(e.ID) != sid {
		r.setMoved(e.ID, sid)
	}
	if att, ok := parts[2].(string); ok {
		e.Attempts, e.LastStatus, e.LastError = parseAttempt(att)
	}
	size, _ := parts[3].(int64)
	if size < 0 && e.Damaged == "" {
		e.Damaged = "the body is missing"
	}
	e.BodySize = int(max(size, 0))
	return e
}

func isNoGroup(err error) bool { return err != nil && goredis.HasErrorPrefix(err, "NOGROUP") }

// fieldMap turns a stream entry's flat field list into a map.
func fieldMap(v any) (map[string]string, error) {
	list, ok := v.([]any)
	if !ok || len(list)%2 != 0 {
		return nil, fmt.Errorf("redis store: unexpected stream fields %T", v)
	}
	m := make(map[string]string, len(list)/2)
	for i := 0; i < len(list); i += 2 {
		k, _ := list[i].(string)
		val, _ := list[i+1].(string)
		m[k] = val
	}
	return m, nil
}

// entryOf builds an entry, without its body, from stored fields; sid is its
// stream id when queued, "" for a dead letter (whose fields carry the id).
func entryOf(sid string, f map[string]string) (*queue.Entry, error) {
	e := &queue.Entry{
		ID:  f["i"],
		Key: f["k"],
		Request: queue.RequestMeta{
			RawQuery:     f["q"],
			ContentType:  f["c"],
			UserAgent:    f["a"],
			ForwardedFor: f["x"],
		},
		Received: unstamp(f["r"]),
		Queued:   unstamp(f["u"]),
	}
	if e.ID == "" {
		id, err := formatID(sid)
		if err != nil {
			return nil, err
		}
		e.ID = id
	}
	return e, nil
}

// A GET of megabytes holds Redis for milliseconds while it copies the
// reply, and a shared pipeline of them for as many times that. So a body is
// read firstChunk in the shared pipeline (most webhooks are smaller, and
// come back whole from that one command), and the rest bodyChunk a round
// trip, letting other clients in between.
const (
	firstChunk = 64 << 10
	bodyChunk  = 256 << 10
)

// readBody finishes a read of the body key that began with first, a
// GETRANGE of its first chunk: a shorter reply is the whole body. ok is
// false when there is no body key, or it went while being read.
func (r *Store) readBody(ctx context.Context, key string, first *goredis.StringCmd) (body []byte, ok bool, err error) {
	if err := first.Err(); err != nil {
		return nil, false, err
	}
	head := first.Val()
	switch {
	case len(head) == 0: // an empty body, or none at all
		n, err := r.client.Exists(ctx, key).Result()
		if err != nil {
			return nil, false, err
		}
		return []byte{}, n == 1, nil
	case len(head) < firstChunk:
		return bytesOf(head), true, nil
	}
	size, err := r.client.StrLen(ctx, key).Result()
	if err != nil {
		return nil, false, err
	}
	n := int(size)
	switch {
	case n < len(head):
		return nil, false, nil // deleted meanwhile; bodies never change
	case n == len(head):
		return bytesOf(head), true, nil
	}
	body = make([]byte, n)
	off := copy(body, head)
	for off < n {
		end := min(off+bodyChunk, n)
		chunk, err := r.client.GetRange(ctx, key, int64(off), int64(end-1)).Result()
		if err != nil {
			return nil, false, err
		}
		if len(chunk) != end-off {
			return nil, false, nil // deleted meanwhile
		}
		off += copy(body[off:], chunk)
	}
	return body, true, nil
}

// Body implements Store. Besides the body's first chunk, the one round
// trip that reads most bodies whole asks the dead index: the body key is
// kept while the entry is dead too, and the index tells the two apart.
func (r *Store) Body(ctx context.Context, id string) ([]byte, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	key := r.bodyPrefix + id
	var dead *goredis.FloatCmd
	var first *goredis.StringCmd
	_, err := r.runCmds(ctx, smallCall+firstChunk, func(pipe goredis.Pipeliner, _ bool) []goredis.Cmder {
		dead, first = pipe.ZScore(ctx, r.deadIdx, id), pipe.GetRange(ctx, key, 0, firstChunk-1)
		return []goredis.Cmder{dead, first}
	})
	if err == nil {
		err = dead.Err()
		if err == nil {
			return nil, fmt.Errorf("body of %s: a dead letter: %w", id, queue.ErrNotFound)
		}
		if errors.Is(err, goredis.Nil) {
			body, ok, err := r.readBody(ctx, key, first)
			switch {
			case err != nil:
				return nil, fmt.Errorf("redis store: body of %s: %w", id, err)
			case ok:
				return body, nil
			}
			return r.legacyBody(ctx, id)
		}
	}
	return nil, fmt.Errorf("redis store: body of %s: %w", id, err)
}

// legacyBody reads the body of an entry queued before bodies had keys of
// their own, from its stream entry.
func (r *Store) legacyBody(ctx context.Context, id string) ([]byte, error) {
	sid, ok := r.movedTo(id)
	if !ok {
		loc, err := r.client.HGet(ctx, r.loc, id).Result()
		switch {
		case err == nil:
			sid = loc
		case errors.Is(err, goredis.Nil):
			sid = parseID(id)
		default:
			return nil, fmt.Errorf("redis store: body of %s: %w", id, err)
		}
	}
	if sid != "" {
		msgs, err := r.client.XRangeN(ctx, r.stream, sid, sid, 1).Result()
		if err != nil {
			return nil, fmt.Errorf("redis store: body of %s: %w", id, err)
		}
		if len(msgs) > 0 {
			if b, ok := msgs[0].Values["b"].(string); ok {
				return bytesOf(b), nil
			}
		}
	}
	return nil, fmt.Errorf("body of %s: %w", id, queue.ErrNotFound)
}

// formatAttempt and parseAttempt keep an entry's last attempt in one hash
// value: "attempts status error".
func formatAttempt(e *queue.Entry) string {
	return strconv.Itoa(e.Attempts) + " " + strconv.Itoa(e.LastStatus) + " " + e.LastError
}

func parseAttempt(s string) (attempts, status int, reason string) {
	parts := strings.SplitN(s, " ", 3)
	if len(parts) == 3 {
		attempts, _ = strconv.Atoi(parts[0])
		status, _ = strconv.Atoi(parts[1])
		reason = parts[2]
	}
	return attempts, status, reason
}

// reclaim resets the idle time of the held entries in ids and returns the
// ids this consumer no longer holds.
func (r *Store) reclaim(ctx context.Context, ids []string, idle time.Duration) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 3+2*len(ids))
	args = append(args, groupName, r.consumer, idle.Milliseconds())
	for _, id := range ids {
		args = append(args, id, parseID(id))
	}
	lost, err := reclaimScript.Run(ctx, r.client, []string{r.stream, r.loc}, args...).StringSlice()
	if isNoGroup(err) {
		return ids, nil // the group, and every claim, is gone
	}
	return lost, err
}

// Extend implements Store: it resets the idle time of the entries this
// consumer holds, so no other consumer takes them over. Ids it no longer
// holds (delivered, or taken over after the visibility timeout) are reported
// with ErrNotFound after the others are extended.
func (r *Store) Extend(ctx context.Context, ids []string) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	lost, err := r.reclaim(ctx, ids, 0)
	if err != nil {
		return fmt.Errorf("redis store: extend: %w", err)
	}
	if len(lost) > 0 {
		return fmt.Errorf("redis store: extend: %d of %d claims not held any more (e.g. %s): %w",
			len(lost), len(ids), lost[0], queue.ErrNotFound)
	}
	return nil
}

// Release implements Store: the entries stay pending but look idle past
// any visibility timeout, so the next Claim of any consumer takes them.
// Ids this consumer does not hold are skipped.
func (r *Store) Release(ctx context.Context, ids []string) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	if _, err := r.reclaim(ctx, ids, releasedIdle); err != nil {
		return fmt.Errorf("redis store: release: %w", err)
	}
	r.forgetMoved(ids...)
	return nil
}

// Attempted implements Store.
func (r *Store) Attempted(ctx context.Context, e *queue.Entry) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	// shares a pipeline: running twice records the same attempt twice
	attempt := formatAttempt(e)
	v, err := r.runScript(ctx, smallCall+len(attempt), attemptedScript, []string{r.stream, r.att, r.loc},
		[]any{e.ID, parseID(e.ID), attempt})
	n, _ := v.(int64)
	if err != nil {
		return fmt.Errorf("redis store: recording attempt on %s: %w", e.ID, err)
	}
	if n == 0 {
		return fmt.Errorf("recording attempt on %s: %w", e.ID, queue.ErrNotFound)
	}
	return nil
}

// Ack implements Store. Acking an id that is no longer queued is not an
// error.
func (r *Store) Ack(ctx context.Context, id string) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	if r.isMoved(id) {
		// a replayed entry: the script finds its stream id and drops the
		// mapping, in one step
		if _, err := r.runScript(ctx, smallCall, ackScript, []string{r.stream, r.att, r.loc, r.bodyPrefix + id},
			[]any{groupName, id, parseID(id)}); err != nil {
			return fmt.Errorf("redis store: ack %s: %w", id, err)
		}
		r.forgetMoved(id)
		return nil
	}
	// The common case needs no script, which costs Redis more than the
	// commands it would run: see queueAcks.
	call := &pipeCall{ctx: ctx, size: smallCall, ack: id}
	err := r.send(call)
	if err == nil {
		for _, c := range call.cmds {
			if err = c.Err(); err != nil {
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("redis store: ack %s: %w", id, err)
	}
	return nil
}

// queueAcks adds the commands of the plain acks of one batch to pipe:
// delete the entries and their bodies, acknowledge them, forget their
// attempts. Each is a no-op for an entry another process got to first.
// They are not atomic, so the order matters: cut off after XDEL, the
// pending entries left behind point at nothing and the next XAUTOCLAIM
// drops them with their bodies and attempts; the bodies go only after the
// entries, so no queued entry is ever without one; an entry acknowledged
// but not deleted would sit in the stream for good.
//
// The acks share one command of each kind. Deleting the stream's first
// entry makes Redis look for the new first one, stepping over every entry
// deleted before it in the same stream node (up to a hundred); one XDEL of
// many ids does that once, not once per id.
func (r *Store) queueAcks(pipe goredis.Pipeliner, acks []*pipeCall) []goredis.Cmder {
	ctx := context.Background() // the pipeline's context is the one that counts
	sids := make([]string, len(acks))
	bodies := make([]string, len(acks))
	for i, call := range acks {
		sids[i], bodies[i] = parseID(call.ack), r.bodyPrefix+call.ack
	}
	return []goredis.Cmder{
		pipe.XDel(ctx, r.stream, sids...),
		pipe.Del(ctx, bodies...),
		pipe.XAck(ctx, r.stream, groupName, sids...),
		pipe.HDel(ctx, r.att, sids...),
	}
}

func (r *Store) setMoved(id, sid string) {
	r.movedMu.Lock()
	defer r.movedMu.Unlock()
	if r.moved == nil {
		r.moved = make(map[string]string)
	}
	r.moved[id] = sid
}

func (r *Store) isMoved(id string) bool {
	_, ok := r.movedTo(id)
	return ok
}

// movedTo returns the stream id of a replayed entry this process holds.
func (r *Store) movedTo(id string) (string, bool) {
	r.movedMu.Lock()
	defer r.movedMu.Unlock()
	sid, ok := r.moved[id]
	return sid, ok
}

// forgetMoved drops ids this process no longer holds from moved.
func (r *Store) forgetMoved(ids ...string) {
	r.movedMu.Lock()
	defer r.movedMu.Unlock()
	for _, id := range ids {
		delete(r.moved, id)
	}
}

// Bury implements Store. It buries the stored entry, whatever its fields,
// with e's attempt, and sets e.Died.
func (r *Store) Bury(ctx context.Context, e *queue.Entry) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	reason := e.LastError
	if e.Damaged != "" && !strings.Contains(reason, e.Damaged) {
		if reason != "" {
			reason += "; "
		}
		reason += "damaged record: " + e.Damaged
	}
	died := r.now()
	n, err := buryScript.Run(ctx, r.client,
		[]string{r.stream, r.att, r.loc, r.deadIdx, r.deadPrefix + e.ID, r.deadTimes},
		groupName, e.ID, parseID(e.ID), e.Attempts, e.LastStatus, reason, stamp(died), died.UnixMilli()).Int()
	if err != nil {
		return fmt.Errorf("redis store: burying %s: %w", e.ID, err)
	}
	r.forgetMoved(e.ID)
	if n == 0 {
		return fmt.Errorf("burying %s: %w", e.ID, queue.ErrNotFound)
	}
	e.Died = died
	return nil
}

// deadFields are what a dead letter listing reads: everything but the body.
var deadFields = []string{"i", "k", "q", "c", "a", "x", "r", "u", "n", "s", "e", "d"}

func deadOf(f map[string]string) (*queue.Entry, error) {
	e, err := entryOf("", f)
	if err != nil {
		return nil, err
	}
	e.Attempts, _ = strconv.Atoi(f["n"])
	e.LastStatus, _ = strconv.Atoi(f["s"])
	e.LastError = f["e"]
	if d, ok := f["d"]; ok {
		e.Died = unstamp(d)
	}
	return e, nil
}

// Dead implements Store.
func (r *Store) Dead(ctx context.Context, after string, limit int) ([]*queue.Entry, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return []*queue.Entry{}, nil
	}
	min := "-"
	if after != "" {
		min = "(" + after
	}
	ids, err := r.client.ZRangeByLex(ctx, r.deadIdx, &goredis.ZRangeBy{Min: min, Max: "+", Count: int64(limit)}).Result()
	if err != nil {
		return nil, fmt.Errorf("redis store: listing dead letters: %w", err)
	}
	if len(ids) == 0 {
		return []*queue.Entry{}, nil
	}
	pipe := r.client.Pipeline()
	cmds := make([]*goredis.SliceCmd, len(ids))
	sizes := make([]*goredis.IntCmd, len(ids))
	legacy := make([]*goredis.IntCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, r.deadPrefix+id, deadFields...)
		sizes[i] = pipe.StrLen(ctx, r.bodyPrefix+id)
		legacy[i] = pipe.HStrLen(ctx, r.deadPrefix+id, "b")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("redis store: listing dead letters: %w", err)
	}
	out := make([]*queue.Entry, 0, len(ids))
	for j, cmd := range cmds {
		vals := cmd.Val()
		f := make(map[string]string, len(deadFields))
		for i, name := range deadFields {
			if s, ok := vals[i].(string); ok {
				f[name] = s
			}
		}
		if f["i"] == "" {
			continue // deleted since the index was read
		}
		e, err := deadOf(f)
		if err != nil {
			return nil, err
		}
		e.BodySize = int(sizes[j].Val() + legacy[j].Val()) // one of them is 0
		out = append(out, e)
	}
	return out, nil
}

// DeadEntry implements Store.
func (r *Store) DeadEntry(ctx context.Context, id string) (*queue.Entry, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	key := r.bodyPrefix + id
	pipe := r.client.Pipeline()
	hash := pipe.HGetAll(ctx, r.deadPrefix+id)
	first := pipe.GetRange(ctx, key, 0, firstChunk-1)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("redis store: dead letter %s: %w", id, err)
	}
	f := hash.Val()
	if len(f) == 0 {
		return nil, fmt.Errorf("dead letter %s: %w", id, queue.ErrNotFound)
	}
	e, err := deadOf(f)
	if err != nil {
		return nil, err
	}
	body, ok, err := r.readBody(ctx, key, first)
	switch {
	case err != nil:
		return nil, fmt.Errorf("redis store: dead letter %s: %w", id, err)
	case ok:
		e.Body = body
	default:
		e.Body = []byte(f["b"]) // legacy, or none
	}
	e.BodySize = len(e.Body)
	return e, nil
}

// DeleteDead implements Store.
func (r *Store) DeleteDead(ctx context.Context, id string) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	n, err := deleteDeadScript.Run(ctx, r.client,
		[]string{r.deadIdx, r.deadPrefix + id, r.deadTimes, r.bodyPrefix + id}, id).Int()
	if err != nil {
		return fmt.Errorf("redis store: deleting dead letter %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("dead letter %s: %w", id, queue.ErrNotFound)
	}
	return nil
}

// replayBatch bounds the ids one replay script handles, so a replay of
// everything does not hold Redis for long.
const replayBatch = 256

// Replay implements Store. Replayed entries join the back of the queue
// under their original ids; their bodies stay where they are.
func (r *Store) Replay(ctx context.Context, ids []string) (int, error) {
	if err := r.usable(ctx); err != nil {
		return 0, err
	}
	if ids == nil {
		all, err := r.client.ZRange(ctx, r.deadIdx, 0, -1).Result()
		if err != nil {
			return 0, fmt.Errorf("redis store: replay: %w", err)
		}
		ids = all
	}
	now := stamp(r.now())
	total := 0
	for len(ids) > 0 {
		batch := ids[:min(len(ids), replayBatch)]
		ids = ids[len(batch):]
		if err := r.moveLegacyBodies(ctx, batch); err != nil {
			return total, fmt.Errorf("redis store: replay: %w", err)
		}
		keys := []string{r.stream, r.deadIdx, r.loc, r.deadTimes}
		args := []any{now}
		for _, id := range batch {
			keys = append(keys, r.deadPrefix+id)
			args = append(args, id)
		}
		n, err := replayScript.Run(ctx, r.client, keys, args...).Int()
		total += n
		if err != nil {
			return total, fmt.Errorf("redis store: replay: %w", err)
		}
	}
	return total, nil
}

// moveLegacyBodies gives the dead letters among ids that still keep their
// body in their hash (written by an older version) a body key, one script
// per letter so that no step carries more than one body.
func (r *Store) moveLegacyBodies(ctx context.Context, ids []string) error {
	pipe := r.client.Pipeline()
	has := make([]*goredis.BoolCmd, len(ids))
	for i, id := range ids {
		has[i] = pipe.HExists(ctx, r.deadPrefix+id, "b")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for i, id := range ids {
		if !has[i].Val() {
			continue
		}
		if err := moveBodyScript.Run(ctx, r.client, []string{r.deadPrefix + id, r.bodyPrefix + id}).Err(); err != nil {
			return err
		}
	}
	return nil
}

// TrimDead implements Store. Letters died in the same millisecond as the
// cutoff are told apart by their exact time of death.
func (r *Store) TrimDead(ctx context.Context, max int, cutoff time.Time, limit int) ([]*queue.Entry, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return []*queue.Entry{}, nil
	}
	pipe := r.client.Pipeline()
	dead := pipe.ZCard(ctx, r.deadIdx)
	timed := pipe.ZCard(ctx, r.deadTimes)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("redis store: trimming dead letters: %w", err)
	}
	if dead.Val() > timed.Val() {
		if err := r.backfillDeadTimes(ctx); err != nil {
			return nil, fmt.Errorf("redis store: trimming dead letters: %w", err)
		}
	}
	cutMS, cutStamp := "", ""
	if !cutoff.IsZero() {
		cutMS, cutStamp = strconv.FormatInt(cutoff.UnixMilli(), 10), stamp(cutoff)
	}
	res, err := trimDeadScript.Run(ctx, r.client, []string{r.deadIdx, r.deadTimes},
		r.deadPrefix, r.bodyPrefix, max, cutMS, cutStamp, limit).Slice()
	if err != nil {
		return nil, fmt.Errorf("redis store: trimming dead letters: %w", err)
	}
	out := make([]*queue.Entry, 0, len(res))
	for _, item := range res {
		f, _ := item.([]any)
		if len(f) < 7 {
			return out, fmt.Errorf("redis store: trimming dead letters: unexpected reply %v", item)
		}
		s := make([]string, len(f))
		for i, v := range f {
			s[i], _ = v.(string)
		}
		e := &queue.Entry{ID: s[0], Key: s[1], LastError: s[6]}
		if s[2] != "" {
			e.Died = unstamp(s[2])
		} else if ms, err := strconv.ParseFloat(s[3], 64); err == nil {
			e.Died = time.UnixMilli(int64(ms)) // a legacy letter: when it was queued
		}
		e.Attempts, _ = strconv.Atoi(s[4])
		e.LastStatus, _ = strconv.Atoi(s[5])
		out = append(out, e)
	}
	return out, nil
}

// backfillBatch bounds the dead letters one backfill step looks at.
const backfillBatch = 256

// backfillDeadTimes gives dead letters written by an older version, which
// have no entry in {p}:deadt, one: their queued time, the best there is.
func (r *Store) backfillDeadTimes(ctx context.Context) error {
	r.backfill.Lock()
	defer r.backfill.Unlock()
	after := ""
	for {
		next, err := backfillDeadScript.Run(ctx, r.client, []string{r.deadIdx, r.deadTimes},
			r.deadPrefix, after, backfillBatch).Text()
		if err != nil {
			return fmt.Errorf("indexing old dead letters by time: %w", err)
		}
		if next == "" {
			return nil
		}
		after = next
	}
}

// Stats implements Store. Keys counts the markers by the minute they
// expire in, so a marker counts until the end of that minute.
func (r *Store) Stats(ctx context.Context) (queue.Stats, error) {
	if err := r.usable(ctx); err != nil {
		return queue.Stats{}, err
	}
	pipe := r.client.Pipeline()
	backlog := pipe.XLen(ctx, r.stream)
	dead := pipe.ZCard(ctx, r.deadIdx)
	timed := pipe.ZCard(ctx, r.deadTimes)
	first := pipe.XRangeN(ctx, r.stream, "-", "+", 1)
	counts := pipe.HGetAll(ctx, r.keyCount)
	if _, err := pipe.Exec(ctx); err != nil {
		return queue.Stats{}, fmt.Errorf("redis store: stats: %w", err)
	}
	s := queue.Stats{Backlog: int(backlog.Val()), Dead: int(dead.Val())}
	if msgs := first.Val(); len(msgs) > 0 {
		if u, ok := msgs[0].Values["u"].(string); ok {
			s.OldestQueued = unstamp(u)
		}
	}
	minute := r.now().UnixMilli() / 60000
	var stale []string
	for field, n := range counts.Val() {
		m, err := strconv.ParseInt(field, 10, 64)
		if err != nil || m < minute {
			stale = append(stale, field)
			continue
		}
		c, _ := strconv.Atoi(n)
		s.Keys += c
	}
	if len(stale) > 0 {
		if err := r.client.HDel(ctx, r.keyCount, stale...).Err(); err != nil {
			return queue.Stats{}, fmt.Errorf("redis store: stats: %w", err)
		}
	}
	if dead.Val() > timed.Val() {
		if err := r.backfillDeadTimes(ctx); err != nil {
			return queue.Stats{}, fmt.Errorf("redis store: stats: %w", err)
		}
	}
	return s, nil
}

// Close implements Store: it closes the client. What this process holds
// stays pending and is taken over after the visibility timeout (the engine
// releases it first at a clean shutdown). A consumer holding nothing is
// removed from the group.
func (r *Store) Close() error {
	if !r.closed.CompareAndSwap(false, true) {
		return queue.ErrClosed
	}
	close(r.stop)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = forgetConsumerScript.Run(ctx, r.client, []string{r.stream}, groupName, r.consumer).Err()
	return r.client.Close()
}

// Interface guard
var _ queue.Store = (*Store)(nil)

// The Redis store's Lua scripts. Each runs atomically on the server; all the
// keys one touches share the relay's hash tag, so they work on Cluster. Keys
// named after an entry id the caller does not know yet (a body key in admit
// and claim, dead letters in TrimDead) are built in the script from a prefix
// in ARGV; they share the hash tag too.
//
// Stream entry fields: k key, q raw query, c content type, a user agent, x
// forwarded for, r received, u queued (times as 20-digit Unix nanoseconds,
// so they compare as strings), i the entry's original id (only on replayed
// entries), and b the body on entries written by older versions. A dead
// letter hash has the same fields plus i, and n attempts, s last status, e
// last error, d died.
//
// Scripts that take an entry id resolve it to its stream id: the stream id
// written in the id (entries never replayed), or the one in the location
// hash (replayed entries, which got a new stream id).
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

// admitScript: run before under this token? -> what it answered; seen? ->
// duplicate; backlog full? -> full; else XADD the entry, put its body in
// place (SET from the last argument, or rename the body SET just before
// under the staging key), THEN set the marker. Scripts do not roll back, so
// the order matters: a marker without a payload would be a lost webhook, a
// payload without a marker only a possible duplicate delivery. A staged
// body that is not there (its SET failed) stores nothing.
//
// The marker holds its expiry time, the admit's token and the stream id it
// stored ("<expires> <token> <stream id>"; older versions wrote the expiry
// alone). It is judged against the caller's now, so the window follows the
// store's clock; its TTL (never shorter than the window, nor than
// markerTTLMin) only cleans up. The token makes the script idempotent: run
// again (a lost reply, a NOSCRIPT fallback) it finds its own marker and
// answers what it answered the first time. A new marker is counted under
// its expiry minute.
//
// KEYS: stream, marker, key count hash, and the staging key when the body
// was staged. ARGV: now, expires, marker ttl ms, max backlog (0: none),
// key, query, content type, user agent, forwarded for, body key prefix,
// expiry minute, token, and the body when it was not staged.
// Returns {1} duplicate, {2} full, {3} no body, {0, stream id} accepted.
var admitScript = goredis.NewScript(idLua + `
local staged = KEYS[4]
local function drop()
  if staged then redis.call('DEL', staged) end
end
local seen = redis.call('GET', KEYS[2])
if seen then
  local expires, token, prev = string.match(seen, '^(%d+) (%S+) (%S+)$')
  if token == ARGV[12] then
    drop()
    return {0, prev}
  end
  if (expires or seen) > ARGV[1] then
    drop()
    return {1}
  end
end
local max = tonumber(ARGV[4])
if max > 0 and redis.call('XLEN', KEYS[1]) >= max then
  drop()
  return {2}
end
if staged and redis.call('EXISTS', staged) == 0 then return {3} end
local sid = redis.call('XADD', KEYS[1], '*',
  'k', ARGV[5], 'q', ARGV[6], 'c', ARGV[7], 'a', ARGV[8], 'x', ARGV[9],
  'r', ARGV[1], 'u', ARGV[1])
local body = ARGV[10] .. entryid(sid)
if staged then
  redis.call('RENAME', staged, body)
  redis.call('PERSIST', body)
else
  redis.call('SET', body, ARGV[13])
end
redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. ARGV[12] .. ' ' .. sid, 'PX', ARGV[3])
redis.call('HINCRBY', KEYS[3], ARGV[11], 1)
return {0, sid}
`)

// claimScript takes over entries idle past the visibility timeout (held by
// a consumer that died, or released), then reads new ones, up to count in
// all, with each entry's recorded attempt and body size. A body field (old
// entries) is left out of the reply: only its size goes back.
//
// What it hands out is kept under its token for the visibility timeout: the
// same claim sent again (its reply was lost) first hands out again what it
// took then and this consumer still holds; what does not fit in count is
// released, for the next claim.
//
// KEYS: stream, attempts hash, claim token. ARGV: group, consumer, min idle
// ms, count, body key prefix, released idle ms. Returns {{stream id, fields, attempt or false,
// body size or -1 when there is no body}...}.
var claimScript = goredis.NewScript(idLua + `
local want = tonumber(ARGV[4])
local out, sids = {}, {}
local function add(e)
  if not (e and e[1]) then return end
  local f, id, legacy = e[2] or {}, nil, nil
  for j = 1, #f, 2 do
    if f[j] == 'i' then id = f[j+1] elseif f[j] == 'b' then legacy = j end
  end
  if legacy then -- leave the body out
    local raw = f
    f = {}
    for j = 1, #raw, 2 do
      if j ~= legacy then f[#f+1] = raw[j]; f[#f+1] = raw[j+1] end
    end
    legacy = #raw[legacy+1]
  end
  id = id or entryid(e[1])
  local size = -1
  if id then
    size = redis.call('STRLEN', ARGV[5] .. id)
    if size == 0 and redis.call('EXISTS', ARGV[5] .. id) == 0 then size = -1 end
  end
  if size < 0 and legacy then size = legacy end
  out[#out+1] = {e[1], f, redis.call('HGET', KEYS[2], e[1]), size}
  sids[#sids+1] = e[1]
end
local prev = redis.call('GET', KEYS[3])
if prev then
  for sid in string.gmatch(prev, '[^,]+') do
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], sid, sid, 1)
    if p[1] and p[1][2] == ARGV[2] then
      if #out < want then
        for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, sid)) do add(e) end
      else
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, sid, 'IDLE', ARGV[6], 'JUSTID')
      end
    end
  end
end
local cursor = '0-0'
for _ = 1, 100 do
  if #out >= want then break end
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', want - #out)
  for _, e in ipairs(r[2]) do add(e) end
  -- pending entries whose payload is gone (an ack cut off after its XDEL)
  -- leave the group here (Redis >= 7); their attempts and bodies go with them
  if r[3] then
    for _, sid in ipairs(r[3]) do
      redis.call('HDEL', KEYS[2], sid)
      local id = entryid(sid)
      if id then redis.call('DEL', ARGV[5] .. id) end
    end
  end
  cursor = r[1]
  if cursor == '0-0' or #out >= want then break end
end
if #out < want then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want - #out, 'STREAMS', KEYS[1], '>')
  if r then for _, e in ipairs(r[1][2]) do add(e) end end
end
if #sids > 0 then
  redis.call('SET', KEYS[3], table.concat(sids, ','), 'PX', ARGV[3])
elseif prev then
  redis.call('DEL', KEYS[3])
end
return out
`)

// reclaimScript resets the idle time of entries this consumer holds: to 0
// (Extend) or past any visibility timeout (Release, so any consumer's next
// Claim takes them at once). Entries another consumer took over are left
// alone and reported.
//
// KEYS: stream, location hash. ARGV: group, consumer, idle ms, then pairs
// of (id, parsed stream id). Returns the ids not held by this consumer.
var reclaimScript = goredis.NewScript(resolveLua + `
local lost = {}
for i = 4, #ARGV, 2 do
  local sid = resolve(KEYS[2], ARGV[i], ARGV[i+1])
  local p = {}
  if sid ~= '' then p = redis.call('XPENDING', KEYS[1], ARGV[1], sid, sid, 1) end
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, sid, 'IDLE', ARGV[3], 'JUSTID')
  else
    lost[#lost+1] = ARGV[i]
  end
end
return lost
`)

// attemptedScript records an entry's last attempt, kept in a hash by stream
// id because stream entries cannot change.
//
// KEYS: stream, attempts hash, location hash. ARGV: id, parsed stream id,
// attempt. Returns 0 when the entry is not queued.
var attemptedScript = goredis.NewScript(resolveLua + `
local sid = resolve(KEYS[3], ARGV[1], ARGV[2])
if sid == '' or #redis.call('XRANGE', KEYS[1], sid, sid) == 0 then return 0 end
redis.call('HSET', KEYS[2], sid, ARGV[3])
return 1
`)

// ackScript removes a delivered replayed entry: XACK, XDEL, its body and its
// bookkeeping.
//
// KEYS: stream, attempts hash, location hash, body key. ARGV: group, id,
// parsed stream id.
var ackScript = goredis.NewScript(resolveLua + `
local sid = resolve(KEYS[3], ARGV[2], ARGV[3])
if sid == '' then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], sid)
redis.call('XDEL', KEYS[1], sid)
redis.call('DEL', KEYS[4])
redis.call('HDEL', KEYS[2], sid)
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
`)

// buryScript moves a queued entry to the dead letters with its last
// attempt and time of death, and out of the queue, in one step. It copies
// whatever fields the entry has, so a damaged one is buried too. The body
// key stays: the dead letter has it.
//
// KEYS: stream, attempts hash, location hash, dead index, dead letter hash,
// died index. ARGV: group, id, parsed stream id, attempts, status, error,
// died (stamp), died (Unix ms). Returns 0 when the entry is not queued.
var buryScript = goredis.NewScript(resolveLua + `
local sid = resolve(KEYS[3], ARGV[2], ARGV[3])
if sid == '' then return 0 end
local r = redis.call('XRANGE', KEYS[1], sid, sid)
if #r == 0 then return 0 end
local f = r[1][2]
local h = {'i', ARGV[2], 'n', ARGV[4], 's', ARGV[5], 'e', ARGV[6], 'd', ARGV[7]}
local ours = {i=true, n=true, s=true, e=true, d=true}
for j = 1, #f - 1, 2 do
  if not ours[f[j]] then h[#h+1] = f[j]; h[#h+1] = f[j+1] end
end
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[5], unpack(h))
redis.call('ZADD', KEYS[4], 0, ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[8], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], sid)
redis.call('XDEL', KEYS[1], sid)
redis.call('HDEL', KEYS[2], sid)
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
`)

// replayScript puts dead letters back at the end of the queue under their
// original ids, attempts reset, queued now. It moves only their metadata:
// the body keys stay (Replay gives old letters one first).
//
// KEYS: stream, dead index, location hash, died index, then one dead letter
// hash per id. ARGV: now, then the ids. Returns how many went back.
var replayScript = goredis.NewScript(`
local meta = {'k', 'q', 'c', 'a', 'x', 'r'}
local n = 0
for i = 2, #ARGV do
  local id, key = ARGV[i], KEYS[i+3]
  if redis.call('EXISTS', key) == 1 then
    local v = redis.call('HMGET', key, unpack(meta))
    local f = {}
    for j, name in ipairs(meta) do
      if v[j] then f[#f+1] = name; f[#f+1] = v[j] end
    end
    f[#f+1] = 'u'; f[#f+1] = ARGV[1]; f[#f+1] = 'i'; f[#f+1] = id
    local sid = redis.call('XADD', KEYS[1], '*', unpack(f))
    redis.call('HSET', KEYS[3], id, sid)
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[4], id)
    n = n + 1
  end
end
return n
`)

// moveBodyScript moves an old dead letter's body from its hash to its body
// key. KEYS: dead letter hash, body key.
var moveBodyScript = goredis.NewScript(`
local b = redis.call('HGET', KEYS[1], 'b')
if not b then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], b) end
redis.call('HDEL', KEYS[1], 'b')
return 1
`)

// deleteDeadScript removes one dead letter and its body. KEYS: dead index,
// dead letter hash, died index, body key. ARGV: id. Returns 0 when there is
// no such dead letter.
var deleteDeadScript = goredis.NewScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[4])
return 1
`)

// trimDeadScript removes up to limit dead letters, oldest death first:
// those died before the cutoff, then the oldest while more than max remain.
// The died index has milliseconds; a letter in the cutoff's millisecond
// goes by its exact time of death. Each letter goes with its hash, body and
// both index entries.
//
// KEYS: dead index, died index. ARGV: dead letter hash prefix, body key
// prefix, max (0: none), cutoff Unix ms (”: none), cutoff stamp, limit.
// Returns {{id, key, died stamp or ”, died index score, attempts, status,
// error}...}.
var trimDeadScript = goredis.NewScript(`
local limit = tonumber(ARGV[6])
local out = {}
local function remove(id, score)
  local h = ARGV[1] .. id
  local f = redis.call('HMGET', h, 'k', 'd', 'n', 's', 'e')
  redis.call('DEL', h, ARGV[2] .. id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  out[#out+1] = {id, f[1] or '', f[2] or '', score, f[3] or '', f[4] or '', f[5] or ''}
end
if ARGV[4] ~= '' then
  local cut, skip = tonumber(ARGV[4]), 0
  while #out < limit do
    local r = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cut, 'WITHSCORES', 'LIMIT', skip, limit - #out)
    if #r == 0 then break end
    for j = 1, #r, 2 do
      local d = redis.call('HGET', ARGV[1] .. r[j], 'd')
      if tonumber(r[j+1]) < cut or (d and d < ARGV[5]) then remove(r[j], r[j+1]) else skip = skip + 1 end
    end
  end
end
local max = tonumber(ARGV[3])
while max > 0 and #out < limit do
  local excess = redis.call('ZCARD', KEYS[1]) - max
  if excess <= 0 then break end
  local r = redis.call('ZRANGE', KEYS[2], 0, math.min(excess, limit - #out) - 1, 'WITHSCORES')
  if #r == 0 then break end
  for j = 1, #r, 2 do remove(r[j], r[j+1]) end
end
return out
`)

// backfillDeadScript gives up to count dead letters after the id in after
// that are missing from the died index (written by older versions) an
// entry there, scored by their queued time.
//
// KEYS: dead index, died index. ARGV: dead letter hash prefix, after (”
// from the start), count. Returns the last id looked at, or ” when done.
var backfillDeadScript = goredis.NewScript(`
local min = '-'
if ARGV[2] ~= '' then min = '(' .. ARGV[2] end
local count = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYLEX', KEYS[1], min, '+', 'LIMIT', 0, count)
for _, id in ipairs(ids) do
  if not redis.call('ZSCORE', KEYS[2], id) then
    local u = redis.call('HGET', ARGV[1] .. id, 'u') or ''
    redis.call('ZADD', KEYS[2], tonumber(string.sub(u, 1, -7)) or 0, id)
  end
end
if #ids < count then return '' end
return ids[#ids]
`)

// forgetConsumerScript deletes this process's consumer from the group when
// it holds nothing, so consumer names of past processes do not pile up.
// KEYS: stream. ARGV: group, consumer.
var forgetConsumerScript = goredis.NewScript(`
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
`)
