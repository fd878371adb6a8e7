package redis

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/bodybuf"
	"github.com/hookrelay/caddy-webhook-relay/queue"

	goredis "github.com/redis/go-redis/v9"
)

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

// admitScript stores an admitted payload: run before under this token? ->
// what it answered; seen? -> duplicate; backlog full? -> full; else XADD an
// entry to each of its lanes, put its one body in place (SET from an
// argument, or rename the body SET just before under the staging key),
// THEN set the marker: all in one script, so all lanes or none. Scripts
// do not roll back, so the order matters: a marker without a payload would
// be a lost webhook, a payload without a marker only a possible duplicate
// delivery. A staged body that is not there (its SET failed) stores nothing.
//
// With ARGV[14] set (wait_replicas or durable_ack), an answer that wrote
// nothing (a duplicate, or this token's earlier run) first writes the
// marker again as it is (SET ... KEEPTTL: same value, same TTL). WAIT and
// WAITAOF wait for the writes of their own connection, and the write that
// stored the payload may have come from another connection or instance.
// Redis remembers, per connection, the offset of its last write in the
// master's one replication stream, and WAIT (WAITAOF) returns once
// replicas (the AOF fsync) have reached that offset; the original admit
// ran before this script, so it lies earlier in that stream and is covered
// too. Redis 7.0 takes that offset after any command, a read too, but 7.2
// and later (and Valkey) only after one that wrote: there, without this
// write, a duplicate reaching another connection was answered 200 at the
// offset of that connection's last write, on no replica
// (TestRedisWaitReplicasDuplicateOnAnotherConnection on Redis 7.2.6).
//
// The marker holds its expiry time, the admit's token and the stream id it
// stored ("<expires> <token> <stream id>"). It is judged against the
// caller's now, so the window follows the store's clock; its TTL (never
// shorter than the window, nor than markerTTLMin) only cleans up. The token
// makes the script idempotent: run again (a lost reply, a NOSCRIPT
// fallback) it finds its own marker and answers what it answered the first
// time. A new marker is counted under its expiry minute; the first marker
// counted under a minute deletes the counts of the minutes gone by, so the
// count hash holds about a window's worth of minutes.
//
//	KEYS[1]  the key's marker, {p}:seen:<key>
//	KEYS[2]  the key count hash, {p}:kc
//	KEYS[3]  the sizes hash, {p}:sz, KEYS[4] the stored total, {p}:stored
//	KEYS[5]  the dead index, {p}:dead, KEYS[6] the died index, {p}:deadt
//	KEYS[7]  the lanes, {p}:lanes, KEYS[8] the id source, {p}:ids
//	KEYS[9]  the references hash, {p}:rc
//	KEYS[10] the staging key {p}:in:<token>, used only when ARGV[20] is "1"
//	KEYS[11] the records, {p}:hist, KEYS[12] the done records, {p}:hdone
//	KEYS[13..] the streams of the lanes in ARGV[27..], {p}:q[:L]
//	ARGV[1]  now (stamp)
//	ARGV[2]  when the marker expires: now + window (stamp)
//	ARGV[3]  the marker's TTL, ms
//	ARGV[4]  max backlog (deliveries), 0 for none
//	ARGV[5]  the dedupe key (stream field k)
//	ARGV[6]  raw query (q), ARGV[7] content type (c), ARGV[8] user agent (a),
//	         ARGV[9] forwarded for (x)
//	ARGV[10] the body key prefix, {p}:b:
//	ARGV[11] the marker's expiry minute (Unix minutes), its field in KEYS[2]
//	ARGV[12] the admit's token
//	ARGV[13] the kept headers (queue.AppendHeaders; stream field h), "" for none
//	ARGV[14] "1" when the admit waits (WAIT, WAITAOF) after the script, else ""
//	ARGV[15] the body, "" when it was staged
//	ARGV[16] max stored bytes, 0 for none
//	ARGV[17] what the payload counts against it (queue.StoredSize)
//	ARGV[18] the dead letter hash prefix, {p}:dead:
//	ARGV[19] "1" to set the marker only (queue.Entry.MarkerOnly): no
//	         stream entry, body or size; its marker's stream id is "-"
//	ARGV[20] "1" when the body was staged under KEYS[10]
//	ARGV[21] the traceparent (stream field p), ARGV[22] the tracestate
//	         (w), "" for none
//	ARGV[23] the stream key prefix, {p}:q, ARGV[24] the consumer group
//	ARGV[25] "1" to keep the payload's record (history on), else ""
//	ARGV[26] the body's length (the record's s)
//	ARGV[27..] the lanes (destinations; stream field t, absent for ""),
//	         one delivery each
//	returns  {0, stream id} accepted (now or by this token's earlier run),
//	         {0, stream id, evicted} accepted after evicted dead letters
//	         gave way, {1} duplicate, {2} backlog full, {3} the staged body
//	         is missing (nothing stored), {4, evicted} store full
//
// The payload's stream id comes from {p}:ids and is the same in every lane
// (see the key list on Store); with several lanes each entry carries its
// delivery id (field i: payload id, "~", lane) and {p}:rc counts them. A
// lane new to the set gets its consumer group here, before its first
// entry. The backlog bound counts the entries of every lane.
//
// With a record (ARGV[25]), the payload's record hash {p}:h:<id> is
// written with the rest (see recordOf for its fields), listed in {p}:hist,
// and queue.RecordCharge added to the total: the record holds the body
// too (unrefLua).
//
// Over max stored bytes, the records of done payloads give way first,
// oldest done first ({p}:hdone), each with its charge and its hold on the
// body; then the oldest dead letters (died index), one at a time, until
// the payload fits or none is left; each one goes with its hash and index
// entries, and its hold on its payload's body (the body and its size go
// with the payload's last hold). They stay removed when that was not
// enough and the answer is {4}: queued payloads come first.
var admitScript = goredis.NewScript(idLua + dropRecordLua + laneLua + `
local staged = nil
if ARGV[20] == '1' then staged = KEYS[10] end
local function drop()
  if staged then redis.call('DEL', staged) end
end
local seen = redis.call('GET', KEYS[1])
if seen then
  local expires, token, prev = string.match(seen, '^(%d+) (%S+) (%S+)$')
  local answer
  if token == ARGV[12] then
    answer = {0, prev}
  elseif expires and expires > ARGV[1] then
    answer = {1}
  end
  if answer then
    drop()
    if ARGV[14] ~= '' then redis.call('SET', KEYS[1], seen, 'KEEPTTL') end
    return answer
  end
end
local function count()
  if redis.call('HINCRBY', KEYS[2], ARGV[11], 1) == 1 then
    local minute = math.floor(tonumber(string.sub(ARGV[1], 1, -10)) / 60)
    for _, m in ipairs(redis.call('HKEYS', KEYS[2])) do
      if (tonumber(m) or 0) < minute then redis.call('HDEL', KEYS[2], m) end
    end
  end
end
if ARGV[19] == '1' then
  drop()
  redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. ARGV[12] .. ' -', 'PX', ARGV[3])
  count()
  return {0, '-'}
end
local lanes = #ARGV - 26
local charge = 0
if ARGV[25] == '1' then charge = recordcharge end
local max = tonumber(ARGV[4])
if max > 0 then
  local queued = 0
  for _, l in ipairs(lanesof(KEYS[7])) do
    queued = queued + redis.call('XLEN', lanekey(ARGV[23], l))
  end
  if queued + lanes > max then
    drop()
    return {2}
  end
end
if staged and redis.call('EXISTS', staged) == 0 then return {3} end
local bound, size, evicted = tonumber(ARGV[16]), tonumber(ARGV[17]), 0
if bound > 0 then
  local need = size + charge
  local stored = tonumber(redis.call('GET', KEYS[4]) or '0')
  while stored + need > bound do
    local old = redis.call('ZRANGE', KEYS[12], 0, 0)
    if #old == 0 then break end
    droprecord(KEYS[11], KEYS[12], KEYS[9], KEYS[3], KEYS[4], ARGV[10], old[1])
    stored = tonumber(redis.call('GET', KEYS[4]) or '0')
  end
  while stored + need > bound do
    local old = redis.call('ZRANGE', KEYS[6], 0, 0)
    if #old == 0 then break end
    local id = old[1]
    redis.call('ZREM', KEYS[6], id)
    redis.call('DEL', ARGV[18] .. id)
    if redis.call('ZREM', KEYS[5], id) == 1 then unref(KEYS[9], KEYS[3], KEYS[4], ARGV[10], id) end
    evicted = evicted + 1
    stored = tonumber(redis.call('GET', KEYS[4]) or '0')
  end
  if stored + need > bound then
    drop()
    return {4, evicted}
  end
end
local f = {'k', ARGV[5], 'q', ARGV[6], 'c', ARGV[7], 'a', ARGV[8], 'x', ARGV[9],
  'r', ARGV[1], 'u', ARGV[1]}
if ARGV[13] ~= '' then f[#f+1] = 'h'; f[#f+1] = ARGV[13] end
if ARGV[21] ~= '' then f[#f+1] = 'p'; f[#f+1] = ARGV[21] end
if ARGV[22] ~= '' then f[#f+1] = 'w'; f[#f+1] = ARGV[22] end
local sid = redis.call('XADD', KEYS[8], 'MAXLEN', '0', '*', 'x', '')
local payload = entryid(sid)
local base = #f
for i = 1, lanes do
  local lane, q = ARGV[26 + i], KEYS[12 + i]
  if redis.call('SADD', KEYS[7], lane) == 1 then
    redis.pcall('XGROUP', 'CREATE', q, ARGV[24], '0', 'MKSTREAM')
  end
  for j = #f, base + 1, -1 do f[j] = nil end
  if lane ~= '' then f[#f+1] = 't'; f[#f+1] = lane end
  if lanes > 1 then f[#f+1] = 'i'; f[#f+1] = payload .. '~' .. lane end
  redis.call('XADD', q, sid, unpack(f))
end
local body = ARGV[10] .. payload
if staged then
  redis.call('RENAME', staged, body)
  redis.call('PERSIST', body)
else
  redis.call('SET', body, ARGV[15])
end
redis.call('HSET', KEYS[3], payload, size)
redis.call('INCRBY', KEYS[4], size + charge)
if lanes > 1 then redis.call('HSET', KEYS[9], payload, lanes) end
if charge > 0 then
  local h = {'r', ARGV[1], 's', ARGV[26]}
  local function opt(name, v)
    if v ~= '' then h[#h+1] = name; h[#h+1] = v end
  end
  opt('k', ARGV[5]); opt('q', ARGV[6]); opt('c', ARGV[7]); opt('a', ARGV[8]); opt('x', ARGV[9])
  opt('h', ARGV[13]); opt('p', ARGV[21]); opt('w', ARGV[22])
  if lanes == 1 then
    opt('t', ARGV[27])
    h[#h+1] = 'd:'; h[#h+1] = 'queued 0 0'
  else
    local names = {}
    for i = 1, lanes do
      names[i] = ARGV[26 + i]
      h[#h+1] = 'd:' .. names[i]; h[#h+1] = 'queued 0 0'
    end
    h[#h+1] = 'l'; h[#h+1] = cjson.encode(names)
  end
  redis.call('HSET', recordkey(ARGV[10], payload), unpack(h))
  redis.call('ZADD', KEYS[11], 0, payload)
end
redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. ARGV[12] .. ' ' .. sid, 'PX', ARGV[3])
count()
if evicted > 0 then return {0, sid, evicted} end
return {0, sid}
`)

// lanesOf returns the lanes e is delivered in: its Destinations, each
// once (a second delivery under the same id would fail the script halfway,
// after the first), else its Destination's.
func lanesOf(e *queue.Entry) []string {
	if len(e.Destinations) == 0 {
		return []string{e.Destination}
	}
	lanes := make([]string, 0, len(e.Destinations))
	for _, d := range e.Destinations {
		if !slices.Contains(lanes, d) {
			lanes = append(lanes, d)
		}
	}
	return lanes
}

// admitCall returns the commands of an admit of e under token: the admit
// script, with the body as its last argument when it is at most
// inlineBodyMax, or else after a plain SET of the body under a staging
// key, which the script renames into place: one body for all the lanes.
func (r *Store) admitCall(e *queue.Entry, token string, now time.Time) func(goredis.Pipeliner, bool) []goredis.Cmder {
	window := r.Window()
	expires := now.Add(window)
	ttl := max(window, markerTTLMin).Milliseconds() + 1000 // never shorter than the window
	lanes := lanesOf(e)
	staged := r.stagedPrefix + token
	keys := make([]string, 0, 12+len(lanes))
	keys = append(keys, r.seenPrefix+e.Key, r.keyCount, r.sizes, r.stored, r.deadIdx, r.deadTimes,
		r.lanes, r.ids, r.refs, staged, r.hist, r.hdone)
	for _, l := range lanes {
		keys = append(keys, r.laneOf(l).stream)
	}
	args := make([]any, 0, 26+len(lanes))
	args = append(args, stamp(now), stamp(expires), ttl, r.MaxBacklog(),
		e.Key, e.Request.RawQuery, e.Request.ContentType, e.Request.UserAgent, e.Request.ForwardedFor,
		r.bodyPrefix, expires.UnixMilli()/60000, token, headersArg(e.Request.Headers), "")
	if r.durable > 0 || r.replicas > 0 {
		args[13] = "1"
	}
	isStaged := !e.MarkerOnly && len(e.Body) > inlineBodyMax
	switch {
	case isStaged, e.MarkerOnly:
		args = append(args, "")
	default:
		args = append(args, e.Body)
	}
	flag := func(b bool) string {
		if b {
			return "1"
		}
		return ""
	}
	args = append(args, r.MaxStored(), queue.StoredSize(len(e.Body), e.Request.Headers), r.deadPrefix,
		flag(e.MarkerOnly), flag(isStaged), e.Request.TraceParent, e.Request.TraceState, r.stream, groupName,
		flag(r.History() > 0), len(e.Body))
	for _, l := range lanes {
		args = append(args, l)
	}
	return func(pipe goredis.Pipeliner, eval bool) []goredis.Cmder {
		ctx := context.Background() // the pipeline's context is the one that counts
		var cmds []goredis.Cmder
		if isStaged {
			cmds = append(cmds, pipe.Set(ctx, staged, e.Body, stagedTTL))
		}
		if eval {
			return append(cmds, admitScript.Eval(ctx, pipe, keys, args...))
		}
		return append(cmds, admitScript.EvalSha(ctx, pipe, keys, args...))
	}
}

// headersArg is the kept headers as the admit script stores them, "" for
// none (then the stream entry has no h field).
func headersArg(fields []queue.HeaderField) string {
	if len(fields) == 0 {
		return ""
	}
	return string(queue.AppendHeaders(nil, fields))
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
	size := smallCall + len(e.Body) + len(e.Key) + len(e.Destination) + len(e.Request.RawQuery) + len(e.Request.ForwardedFor) +
		len(e.Request.UserAgent) + len(e.Request.ContentType) + len(e.Request.TraceParent) + len(e.Request.TraceState)
	for _, h := range e.Request.Headers {
		size += len(h.Name) + len(h.Value) + 4
	}
	for _, d := range e.Destinations {
		size += 2*len(d) + 64 // its name, and the stream key named after it
	}
	admit := func() ([]any, error) {
		if len(e.Body) > inlineBodyMax && !e.MarkerOnly {
			// staged: a body SET of its own, within the store's bound
			release, err := r.takeBodyBytes(ctx, len(e.Body))
			if err != nil {
				return nil, err
			}
			defer release()
		}
		if r.durable > 0 || r.replicas > 0 {
			return r.admitWaiting(ctx, enqueue)
		}
		call := &pipeCall{ctx: ctx, size: size, enqueue: enqueue, borrowed: cap(e.Body) >= bodybuf.Threshold}
		if err := r.send(call); err != nil {
			return nil, err
		}
		return admitReply(call.cmds)
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
	r.reportEvicted(res)
	switch code, _ := res[0].(int64); code {
	case 1:
		return queue.Duplicate, nil
	case 2:
		return 0, queue.ErrBacklogFull
	case 4:
		return 0, queue.ErrStoreFull
	case 3:
		return 0, errors.New("redis store: admit: the body did not reach Redis; nothing was stored")
	}
	if e.MarkerOnly {
		return queue.Accepted, nil
	}
	var sid string
	if len(res) > 1 {
		sid, _ = res[1].(string)
	}
	id, err := formatID(sid)
	if err != nil {
		return 0, err
	}
	e.ID, e.Payload, e.Received, e.Queued = id, id, now, now
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

// admitWaiting runs the admit's commands and then WAITAOF (durable_ack)
// and WAIT (wait_replicas) in one pipeline: both wait for the writes of
// their own connection, so all must share one. On Cluster that is a
// pipeline of the master of the relay's slot, which holds all its keys.
// A duplicate waits too, for the marker the script wrote again, so that
// its 200 holds what the first one would have: the payload on the
// replicas (in the AOF), whichever connection stored it.
func (r *Store) admitWaiting(ctx context.Context, enqueue func(goredis.Pipeliner, bool) []goredis.Cmder) ([]any, error) {
	var pipe func() goredis.Pipeliner
	cluster, isCluster := r.client.(*goredis.ClusterClient)
	if isCluster {
		node, err := cluster.MasterForKey(ctx, r.stream)
		if err != nil {
			return nil, err
		}
		pipe = node.Pipeline
	} else {
		pipe = r.client.Pipeline
	}
	run := func(eval bool) (cmds []goredis.Cmder, aof, replicas *goredis.Cmd) {
		pipe := pipe()
		cmds = enqueue(pipe, eval)
		if r.durable > 0 {
			aof = pipe.Do(ctx, "WAITAOF", 1, 0, r.durable.Milliseconds())
		}
		if r.replicas > 0 {
			replicas = pipe.Do(ctx, "WAIT", r.replicas, r.replicasWait.Milliseconds())
		}
		_, err := pipe.Exec(ctx)
		r.answered(err)
		return cmds, aof, replicas
	}
	cmds, aof, replicas := run(false)
	if goredis.HasErrorPrefix(cmds[len(cmds)-1].Err(), "NOSCRIPT") {
		cmds, aof, replicas = run(true)
	}
	res, err := admitReply(cmds)
	if err != nil {
		if isCluster && (goredis.HasErrorPrefix(err, "MOVED") || goredis.HasErrorPrefix(err, "CLUSTERDOWN")) {
			// the slot has a new master (a failover): nothing ran; learn
			// the new layout for the sender's retry
			cluster.ReloadState(ctx)
		}
		return nil, err
	}
	switch code, _ := res[0].(int64); code {
	case 0, 1:
		// accepted, or a duplicate: both are answered 200, so both wait
		// (the script wrote the duplicate's marker again for that)
	default:
		return res, nil // no 200, nothing to wait for
	}
	if aof != nil {
		acks, err := aof.Int64Slice()
		if err != nil {
			return nil, fmt.Errorf("waiting for the AOF fsync: %w", err)
		}
		if len(acks) == 0 || acks[0] < 1 {
			return nil, fmt.Errorf("the AOF was not fsynced within %s (the payload is in Redis memory; "+
				"the sender's retry is answered 200 once it is fsynced)", r.durable)
		}
	}
	if replicas != nil {
		n, err := replicas.Int64()
		if err != nil {
			return nil, fmt.Errorf("waiting for %d replicas: %w", r.replicas, err)
		}
		if n < int64(r.replicas) {
			return nil, fmt.Errorf("only %d of the %d replicas wait_replicas asks for had the payload within %s "+
				"(it is on the master; the sender's retry is answered 200 once they have it)", n, r.replicas, r.replicasWait)
		}
	}
	return res, nil
}
