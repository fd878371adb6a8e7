package dedupe

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

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Redis is a Store kept in Redis, shared by every Caddy instance pointing at
// the same Redis and relay: the queue is a stream read through a consumer
// group, so each instance delivers its share and takes over the entries of
// an instance that died.
//
// Keys, all under the hash tag {Prefix} so scripts work on Cluster:
//
//	{p}:q          stream of queued entries (XDEL'd when delivered, so XLEN is the backlog)
//	{p}:seen:<key> dedupe marker: its expiry time, with a TTL >= the window
//	{p}:att        hash: stream id -> last attempt of a queued entry
//	{p}:loc        hash: entry id -> stream id, for replayed entries only
//	{p}:dead       sorted set of dead letter ids (lexical order is id order)
//	{p}:dead:<id>  hash: one dead letter
//
// It is as durable as the Redis it points at: run Redis with AOF
// (appendfsync everysec or always) and maxmemory-policy noeviction.
type Redis struct {
	client redis.UniversalClient
	now    func() time.Time
	limits
	consumer string
	idle     time.Duration
	durable  time.Duration // WAITAOF timeout; 0: do not wait
	closed   atomic.Bool
	calls    chan *pipeCall // to the pipeliners
	inflight atomic.Int64   // script calls running now
	stop     chan struct{}  // closed by Close

	stream, att, loc, deadIdx, deadPrefix, seenPrefix string

	// moved maps the ids of replayed entries this process holds to their
	// stream ids; every other queued entry's stream id is its id's.
	movedMu sync.Mutex
	moved   map[string]string
}

// RedisConfig sets up a Redis store beyond the relay's Options.
type RedisConfig struct {
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

// NewRedis opens the store on client, which it owns from now on: Close
// closes it. It creates the consumer group if needed, warns unless Redis
// evicts nothing, and with DurableAck checks that the server can wait for
// its AOF. It fails if Redis cannot be reached.
func NewRedis(ctx context.Context, client redis.UniversalClient, cfg RedisConfig, opts Options) (*Redis, error) {
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
	r := &Redis{
		client:     client,
		now:        opts.Clock(),
		consumer:   cfg.Consumer,
		idle:       cfg.VisibilityTimeout,
		stream:     tag + ":q",
		att:        tag + ":att",
		loc:        tag + ":loc",
		deadIdx:    tag + ":dead",
		deadPrefix: tag + ":dead:",
		seenPrefix: tag + ":seen:",
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
	for _, s := range []*redis.Script{admitScript, claimScript, reclaimScript, attemptedScript,
		ackScript, buryScript, replayScript, deleteDeadScript, forgetConsumerScript} {
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
	var reply redis.Error
	return !errors.As(err, &reply)
}

func (r *Redis) ensureGroup(ctx context.Context) error {
	err := r.client.XGroupCreateMkStream(ctx, r.stream, groupName, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("redis store: creating consumer group on %s: %w", r.stream, err)
	}
	return nil
}

// checkEviction warns unless Redis is set to evict nothing: an evicted
// stream or marker is a lost webhook or a duplicate delivery.
func checkEviction(ctx context.Context, client redis.UniversalClient, log *zap.Logger) {
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
func checkWaitAOF(ctx context.Context, client redis.UniversalClient) error {
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

func (r *Redis) usable(ctx context.Context) error {
	if r.closed.Load() {
		return ErrClosed
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

// Admit implements Store.
func (r *Redis) Admit(ctx context.Context, e *Entry) (Admission, error) {
	if err := r.usable(ctx); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, AdmitTimeout)
	defer cancel()
	now := r.now()
	window := r.windowLen()
	ttl := window.Milliseconds() + 1000 // never shorter than the window
	keys := []string{r.stream, r.seenPrefix + e.Key}
	args := []any{stamp(now), stamp(now.Add(window)), ttl, r.maxBacklog(),
		e.Key, e.Body, e.Request.RawQuery, e.Request.ContentType, e.Request.UserAgent, e.Request.ForwardedFor}

	var res []any
	var err error
	if r.durable > 0 {
		res, err = r.admitDurable(ctx, keys, args)
	} else {
		var v any
		if v, err = r.runScript(ctx, admitScript, keys, args); err == nil {
			res, _ = v.([]any)
			if len(res) == 0 {
				err = fmt.Errorf("unexpected reply %v", v)
			}
		}
	}
	if err != nil {
		return 0, fmt.Errorf("redis store: admit: %w", err)
	}
	switch code, _ := res[0].(int64); code {
	case 1:
		return Duplicate, nil
	case 2:
		return 0, ErrBacklogFull
	}
	sid, _ := res[1].(string)
	id, err := formatID(sid)
	if err != nil {
		return 0, err
	}
	e.ID, e.Received, e.Queued = id, now, now
	return Accepted, nil
}

// admitDurable runs the admit script and WAITAOF in one pipeline: WAITAOF
// waits for the writes of its own connection, so both must share one.
func (r *Redis) admitDurable(ctx context.Context, keys []string, args []any) ([]any, error) {
	run := func(eval bool) (*redis.Cmd, *redis.Cmd, error) {
		pipe := r.client.Pipeline()
		var admit *redis.Cmd
		if eval {
			admit = admitScript.Eval(ctx, pipe, keys, args...)
		} else {
			admit = admitScript.EvalSha(ctx, pipe, keys, args...)
		}
		wait := pipe.Do(ctx, "WAITAOF", 1, 0, r.durable.Milliseconds())
		_, err := pipe.Exec(ctx)
		return admit, wait, err
	}
	admit, wait, err := run(false)
	if err != nil && redis.HasErrorPrefix(admit.Err(), "NOSCRIPT") {
		admit, wait, err = run(true)
	}
	if err != nil {
		return nil, err
	}
	res, err := admit.Slice()
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

// Claim implements Store. It first takes over entries idle past the
// visibility timeout (a dead consumer's, or released ones), then reads new
// ones.
func (r *Redis) Claim(ctx context.Context, max int) ([]*Entry, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, nil
	}
	run := func() ([]any, error) {
		return claimScript.Run(ctx, r.client, []string{r.stream, r.att},
			groupName, r.consumer, r.idle.Milliseconds(), max).Slice()
	}
	res, err := run()
	if isNoGroup(err) { // Redis lost its data: start over with a new group
		if err = r.ensureGroup(ctx); err == nil {
			res, err = run()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("redis store: claim: %w", err)
	}
	out := make([]*Entry, 0, len(res))
	for _, item := range res {
		parts, _ := item.([]any)
		if len(parts) < 3 {
			return nil, fmt.Errorf("redis store: claim: unexpected reply %v", item)
		}
		sid, _ := parts[0].(string)
		fields, err := fieldMap(parts[1])
		if err != nil {
			return nil, err
		}
		e, err := entryOf(sid, fields)
		if err != nil {
			return nil, err
		}
		if parseID(e.ID) != sid {
			r.setMoved(e.ID, sid)
		}
		if att, ok := parts[2].(string); ok {
			e.Attempts, e.LastStatus, e.LastError = parseAttempt(att)
		}
		out = append(out, e)
	}
	return out, nil
}

func isNoGroup(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOGROUP") }

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

// entryOf builds an entry from stored fields; sid is its stream id when
// queued, "" for a dead letter (whose fields carry the id).
func entryOf(sid string, f map[string]string) (*Entry, error) {
	e := &Entry{
		ID:  f["i"],
		Key: f["k"],
		Request: RequestMeta{
			RawQuery:     f["q"],
			ContentType:  f["c"],
			UserAgent:    f["a"],
			ForwardedFor: f["x"],
		},
		Received: unstamp(f["r"]),
		Queued:   unstamp(f["u"]),
	}
	if b, ok := f["b"]; ok {
		e.Body = []byte(b)
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

// formatAttempt and parseAttempt keep an entry's last attempt in one hash
// value: "attempts status error".
func formatAttempt(e *Entry) string {
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
func (r *Redis) reclaim(ctx context.Context, ids []string, idle time.Duration) ([]string, error) {
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
func (r *Redis) Extend(ctx context.Context, ids []string) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	lost, err := r.reclaim(ctx, ids, 0)
	if err != nil {
		return fmt.Errorf("redis store: extend: %w", err)
	}
	if len(lost) > 0 {
		return fmt.Errorf("redis store: extend: %d of %d claims not held any more (e.g. %s): %w",
			len(lost), len(ids), lost[0], ErrNotFound)
	}
	return nil
}

// Release implements Store: the entries stay pending but look idle past
// any visibility timeout, so the next Claim of any consumer takes them.
// Ids this consumer does not hold are skipped.
func (r *Redis) Release(ctx context.Context, ids []string) error {
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
func (r *Redis) Attempted(ctx context.Context, e *Entry) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	n, err := attemptedScript.Run(ctx, r.client, []string{r.stream, r.att, r.loc},
		e.ID, parseID(e.ID), formatAttempt(e)).Int()
	if err != nil {
		return fmt.Errorf("redis store: recording attempt on %s: %w", e.ID, err)
	}
	if n == 0 {
		return fmt.Errorf("recording attempt on %s: %w", e.ID, ErrNotFound)
	}
	return nil
}

// Ack implements Store. Acking an id that is no longer queued is not an
// error.
func (r *Redis) Ack(ctx context.Context, id string) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	if r.isMoved(id) {
		// a replayed entry: the script finds its stream id and drops the
		// mapping, in one step
		if _, err := r.runScript(ctx, ackScript, []string{r.stream, r.att, r.loc},
			[]any{groupName, id, parseID(id)}); err != nil {
			return fmt.Errorf("redis store: ack %s: %w", id, err)
		}
		r.forgetMoved(id)
		return nil
	}
	// The common case needs no script, which costs Redis more than the
	// commands it would run: delete, acknowledge, forget the attempt. Each
	// is a no-op if another process got there first. They are not atomic,
	// so the order matters: cut off after XDEL, the pending entry left
	// behind points at nothing and the next XAUTOCLAIM drops it (with its
	// attempt), while an entry acknowledged but not deleted would sit in the
	// stream for good, counted in the backlog.
	sid := parseID(id)
	cmds, err := r.runCmds(ctx, func(pipe redis.Pipeliner, _ bool) []redis.Cmder {
		return []redis.Cmder{
			pipe.XDel(ctx, r.stream, sid),
			pipe.XAck(ctx, r.stream, groupName, sid),
			pipe.HDel(ctx, r.att, sid),
		}
	})
	if err == nil {
		for _, c := range cmds {
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

func (r *Redis) setMoved(id, sid string) {
	r.movedMu.Lock()
	defer r.movedMu.Unlock()
	if r.moved == nil {
		r.moved = make(map[string]string)
	}
	r.moved[id] = sid
}

func (r *Redis) isMoved(id string) bool {
	r.movedMu.Lock()
	defer r.movedMu.Unlock()
	_, ok := r.moved[id]
	return ok
}

// forgetMoved drops ids this process no longer holds from moved.
func (r *Redis) forgetMoved(ids ...string) {
	r.movedMu.Lock()
	defer r.movedMu.Unlock()
	for _, id := range ids {
		delete(r.moved, id)
	}
}

// Bury implements Store. It buries the stored entry with e's attempt.
func (r *Redis) Bury(ctx context.Context, e *Entry) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	n, err := buryScript.Run(ctx, r.client,
		[]string{r.stream, r.att, r.loc, r.deadIdx, r.deadPrefix + e.ID},
		groupName, e.ID, parseID(e.ID), e.Attempts, e.LastStatus, e.LastError).Int()
	if err != nil {
		return fmt.Errorf("redis store: burying %s: %w", e.ID, err)
	}
	r.forgetMoved(e.ID)
	if n == 0 {
		return fmt.Errorf("burying %s: %w", e.ID, ErrNotFound)
	}
	return nil
}

// deadFields are what a dead letter listing reads: everything but the body.
var deadFields = []string{"i", "k", "q", "c", "a", "x", "r", "u", "n", "s", "e"}

func deadOf(f map[string]string) (*Entry, error) {
	e, err := entryOf("", f)
	if err != nil {
		return nil, err
	}
	e.Attempts, _ = strconv.Atoi(f["n"])
	e.LastStatus, _ = strconv.Atoi(f["s"])
	e.LastError = f["e"]
	return e, nil
}

// Dead implements Store.
func (r *Redis) Dead(ctx context.Context, after string, limit int) ([]*Entry, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return []*Entry{}, nil
	}
	min := "-"
	if after != "" {
		min = "(" + after
	}
	ids, err := r.client.ZRangeByLex(ctx, r.deadIdx, &redis.ZRangeBy{Min: min, Max: "+", Count: int64(limit)}).Result()
	if err != nil {
		return nil, fmt.Errorf("redis store: listing dead letters: %w", err)
	}
	if len(ids) == 0 {
		return []*Entry{}, nil
	}
	pipe := r.client.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	sizes := make([]*redis.IntCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, r.deadPrefix+id, deadFields...)
		sizes[i] = pipe.HStrLen(ctx, r.deadPrefix+id, "b")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("redis store: listing dead letters: %w", err)
	}
	out := make([]*Entry, 0, len(ids))
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
		e.BodySize = int(sizes[j].Val())
		out = append(out, e)
	}
	return out, nil
}

// DeadEntry implements Store.
func (r *Redis) DeadEntry(ctx context.Context, id string) (*Entry, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	f, err := r.client.HGetAll(ctx, r.deadPrefix+id).Result()
	if err != nil {
		return nil, fmt.Errorf("redis store: dead letter %s: %w", id, err)
	}
	if len(f) == 0 {
		return nil, fmt.Errorf("dead letter %s: %w", id, ErrNotFound)
	}
	e, err := deadOf(f)
	if err != nil {
		return nil, err
	}
	if e.Body == nil {
		e.Body = []byte{}
	}
	return e, nil
}

// DeleteDead implements Store.
func (r *Redis) DeleteDead(ctx context.Context, id string) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	n, err := deleteDeadScript.Run(ctx, r.client, []string{r.deadIdx, r.deadPrefix + id}, id).Int()
	if err != nil {
		return fmt.Errorf("redis store: deleting dead letter %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("dead letter %s: %w", id, ErrNotFound)
	}
	return nil
}

// replayBatch bounds the ids one replay script handles, so a replay of
// everything does not hold Redis for long.
const replayBatch = 256

// Replay implements Store. Replayed entries join the back of the queue
// under their original ids.
func (r *Redis) Replay(ctx context.Context, ids []string) (int, error) {
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
		keys := []string{r.stream, r.deadIdx, r.loc}
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

// Stats implements Store.
func (r *Redis) Stats(ctx context.Context) (Stats, error) {
	if err := r.usable(ctx); err != nil {
		return Stats{}, err
	}
	pipe := r.client.Pipeline()
	backlog := pipe.XLen(ctx, r.stream)
	dead := pipe.ZCard(ctx, r.deadIdx)
	first := pipe.XRangeN(ctx, r.stream, "-", "+", 1)
	if _, err := pipe.Exec(ctx); err != nil {
		return Stats{}, fmt.Errorf("redis store: stats: %w", err)
	}
	s := Stats{Backlog: int(backlog.Val()), Dead: int(dead.Val())}
	if msgs := first.Val(); len(msgs) > 0 {
		if u, ok := msgs[0].Values["u"].(string); ok {
			s.OldestQueued = unstamp(u)
		}
	}
	return s, nil
}

// Close implements Store: it closes the client. What this process holds
// stays pending and is taken over after the visibility timeout (the engine
// releases it first at a clean shutdown). A consumer holding nothing is
// removed from the group.
func (r *Redis) Close() error {
	if !r.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	close(r.stop)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = forgetConsumerScript.Run(ctx, r.client, []string{r.stream}, groupName, r.consumer).Err()
	return r.client.Close()
}

// Interface guard
var _ Store = (*Redis)(nil)

// The Redis store's Lua scripts. Each runs atomically on the server; all the
// keys one touches share the relay's hash tag, so they work on Cluster.
//
// Stream entry fields: k key, b body, q raw query, c content type, a user
// agent, x forwarded for, r received, u queued (times as 20-digit Unix
// nanoseconds, so they compare as strings), i the entry's original id (only
// on replayed entries). A dead letter hash has the same fields plus i, and n
// attempts, s last status, e last error.
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

// admitScript: seen? -> duplicate; backlog full? -> full; else XADD the
// payload, THEN set the marker. Scripts do not roll back, so the order
// matters: a marker without a payload would be a lost webhook, a payload
// without a marker only a possible duplicate delivery.
//
// The marker holds its expiry time and is judged against the caller's now,
// so the window follows the store's clock; its TTL (never shorter than the
// window) only cleans up.
//
// KEYS: stream, marker. ARGV: now, expires, ttl ms, max backlog (0: none),
// key, body, query, content type, user agent, forwarded for.
// Returns {1} duplicate, {2} full, {0, stream id} accepted.
var admitScript = redis.NewScript(`
local seen = redis.call('GET', KEYS[2])
if seen and seen > ARGV[1] then return {1} end
local max = tonumber(ARGV[4])
if max > 0 and redis.call('XLEN', KEYS[1]) >= max then return {2} end
local sid = redis.call('XADD', KEYS[1], '*',
  'k', ARGV[5], 'b', ARGV[6], 'q', ARGV[7], 'c', ARGV[8], 'a', ARGV[9], 'x', ARGV[10],
  'r', ARGV[1], 'u', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {0, sid}
`)

// claimScript takes over entries idle past the visibility timeout (held by
// a consumer that died, or released), then reads new ones, up to count in
// all, with each entry's recorded attempt.
//
// KEYS: stream, attempts hash. ARGV: group, consumer, min idle ms, count.
// Returns {{stream id, fields, attempt or false}...}.
var claimScript = redis.NewScript(`
local want = tonumber(ARGV[4])
local out = {}
local function add(e)
  if e and e[1] then
    out[#out+1] = {e[1], e[2], redis.call('HGET', KEYS[2], e[1])}
  end
end
local cursor = '0-0'
for _ = 1, 100 do
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', want - #out)
  for _, e in ipairs(r[2]) do add(e) end
  -- pending entries whose payload is gone (an ack cut off after its XDEL)
  -- leave the group here (Redis >= 7); their attempts go with them
  if r[3] then for _, sid in ipairs(r[3]) do redis.call('HDEL', KEYS[2], sid) end end
  cursor = r[1]
  if cursor == '0-0' or #out >= want then break end
end
if #out < want then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want - #out, 'STREAMS', KEYS[1], '>')
  if r then for _, e in ipairs(r[1][2]) do add(e) end end
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
var reclaimScript = redis.NewScript(resolveLua + `
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
var attemptedScript = redis.NewScript(resolveLua + `
local sid = resolve(KEYS[3], ARGV[1], ARGV[2])
if sid == '' or #redis.call('XRANGE', KEYS[1], sid, sid) == 0 then return 0 end
redis.call('HSET', KEYS[2], sid, ARGV[3])
return 1
`)

// ackScript removes a delivered entry: XACK, XDEL and its bookkeeping.
//
// KEYS: stream, attempts hash, location hash. ARGV: group, id, parsed
// stream id.
var ackScript = redis.NewScript(resolveLua + `
local sid = resolve(KEYS[3], ARGV[2], ARGV[3])
if sid == '' then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], sid)
redis.call('XDEL', KEYS[1], sid)
redis.call('HDEL', KEYS[2], sid)
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
`)

// buryScript moves a queued entry to the dead letters with its last
// attempt, and out of the queue, in one step.
//
// KEYS: stream, attempts hash, location hash, dead index, dead letter hash.
// ARGV: group, id, parsed stream id, attempts, status, error.
// Returns 0 when the entry is not queued.
var buryScript = redis.NewScript(resolveLua + `
local sid = resolve(KEYS[3], ARGV[2], ARGV[3])
if sid == '' then return 0 end
local r = redis.call('XRANGE', KEYS[1], sid, sid)
if #r == 0 then return 0 end
local f = r[1][2]
local h = {'i', ARGV[2], 'n', ARGV[4], 's', ARGV[5], 'e', ARGV[6]}
for j = 1, #f, 2 do
  if f[j] ~= 'i' then h[#h+1] = f[j]; h[#h+1] = f[j+1] end
end
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[5], unpack(h))
redis.call('ZADD', KEYS[4], 0, ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], sid)
redis.call('XDEL', KEYS[1], sid)
redis.call('HDEL', KEYS[2], sid)
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
`)

// replayScript puts dead letters back at the end of the queue under their
// original ids, attempts reset, queued now.
//
// KEYS: stream, dead index, location hash, then one dead letter hash per id.
// ARGV: now, then the ids. Returns how many went back.
var replayScript = redis.NewScript(`
local keep = {k=true, b=true, q=true, c=true, a=true, x=true, r=true}
local n = 0
for i = 2, #ARGV do
  local id, key = ARGV[i], KEYS[i+2]
  local h = redis.call('HGETALL', key)
  if #h > 0 then
    local f = {}
    for j = 1, #h, 2 do
      if keep[h[j]] then f[#f+1] = h[j]; f[#f+1] = h[j+1] end
    end
    f[#f+1] = 'u'; f[#f+1] = ARGV[1]; f[#f+1] = 'i'; f[#f+1] = id
    local sid = redis.call('XADD', KEYS[1], '*', unpack(f))
    redis.call('HSET', KEYS[3], id, sid)
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[2], id)
    n = n + 1
  end
end
return n
`)

// deleteDeadScript removes one dead letter. KEYS: dead index, dead letter
// hash. ARGV: id. Returns 0 when there is no such dead letter.
var deleteDeadScript = redis.NewScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
return 1
`)

// forgetConsumerScript deletes this process's consumer from the group when
// it holds nothing, so consumer names of past processes do not pile up.
// KEYS: stream. ARGV: group, consumer.
var forgetConsumerScript = redis.NewScript(`
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
`)
