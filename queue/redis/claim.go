package redis

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"

	goredis "github.com/redis/go-redis/v9"
)

// claimScript takes over entries idle past the visibility timeout (held by
// a consumer that died, or released), then hands out due retries and new
// entries merged by due time, up to count in all, with each entry's recorded attempt and body size. Pending
// entries whose stream entry is gone (an ack cut off after its XDEL) leave
// the group, with their attempts and bodies, once idle past the timeout.
//
// Idle entries are found with XPENDING IDLE, which reads only the pending
// list, and taken with XCLAIM. XAUTOCLAIM, which did both, looks every
// pending entry it steps over up in the stream before it looks at its idle
// time: on Redis 7.0 that cost a claim tens of thousands of instructions
// for every entry held by a live consumer, as much as the rest of the claim
// (callgrind: 1000 entries admitted, claimed 64 at a time and held, 656k
// instructions of Redis per entry with XAUTOCLAIM, 257k without).
//
// What it hands out is kept under its token for the visibility timeout: the
// same claim sent again (its reply was lost) first hands out again what it
// took then and this consumer still holds; what does not fit in count is
// released, for the next claim.
//
//	KEYS[1]  the lane's stream, {p}:q[:L]
//	KEYS[2]  the lane's attempts hash, {p}:att[:L]
//	KEYS[3]  the claim's token key, {p}:clm:<token>
//	KEYS[4]  the lane's retries waiting, {p}:due[:L]
//	KEYS[5]  the references hash, {p}:rc, KEYS[6] the sizes hash, {p}:sz,
//	KEYS[7]  the stored total, {p}:stored
//	ARGV[1]  the consumer group
//	ARGV[2]  this consumer
//	ARGV[3]  the visibility timeout, ms (min idle for a takeover)
//	ARGV[4]  count: at most this many entries
//	ARGV[5]  the body key prefix, {p}:b:
//	ARGV[6]  the idle time Release gives, ms
//	ARGV[7]  now, Unix ms: retries due by then are handed out
//	returns  {{stream id, fields, attempt or false, body size or -1 when
//	         there is no body}...}, oldest due first; at most count
//
// Retries due (Retry acknowledged them, so they are in no consumer's
// pending list, and listed them in {p}:due) and new entries come out
// oldest due first, a new entry being due from when it was queued (the
// store's clock, as the due times are): a retry due before the next new
// entry was queued goes first, else the new entry. Handing every due retry
// out before any new entry let thousands of failing payloads, retried every
// second or two, starve the new ones (TestRetriesWaitInTheStoreRedis: 0 of
// 50 healthy payloads delivered). The next new entries are read (XRANGE
// after the group's last-delivered-id) only while a retry is due. XCLAIM
// FORCE makes a due retry pending for this consumer again, so from then on
// it is held as any claimed entry, and taken over if this consumer dies.
var claimScript = goredis.NewScript(idLua + unrefLua + `
local want = tonumber(ARGV[4])
local out, sids = {}, {}
local function add(e)
  if not (e and e[1]) then return end
  local f, id = e[2] or {}, nil
  for j = 1, #f, 2 do
    if f[j] == 'i' then id = f[j+1] end
  end
  id = id or entryid(e[1])
  local size = -1
  if id then
    local body = ARGV[5] .. payloadof(id)
    size = redis.call('STRLEN', body)
    if size == 0 and redis.call('EXISTS', body) == 0 then size = -1 end
  end
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
-- Take over what is idle past the visibility timeout, oldest first.
-- XPENDING looks at the pending list alone; XAUTOCLAIM would also look up
-- every entry it steps over in the stream, the entries this and the other
-- live consumers hold included, which costs more than the rest of a claim.
if #out < want then
  local idle = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', want - #out)
  for from = 1, #idle, 100 do
    local batch, taken = {}, {}
    for j = from, math.min(from + 99, #idle) do batch[#batch+1] = idle[j][1] end
    for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(batch))) do
      if e and e[1] then
        taken[e[1]] = true
        add(e)
      end
    end
    -- pending entries whose payload is gone (an ack cut off after its
    -- XDEL) leave the group (XCLAIM drops them on Redis >= 7, XACK on older
    -- ones); their attempts go with them, and their hold on the body (only
    -- a plain ack, of a payload's one delivery never replayed, is cut off:
    -- the others are scripts)
    for _, sid in ipairs(batch) do
      if not taken[sid] and #redis.call('XRANGE', KEYS[1], sid, sid) == 0 then
        redis.call('XACK', KEYS[1], ARGV[1], sid)
        redis.call('HDEL', KEYS[2], sid)
        local id = entryid(sid)
        if id then unref(KEYS[5], KEYS[6], KEYS[7], ARGV[5], id) end
      end
    end
  end
end
-- Due retries and new entries, merged by due time: a new entry is due
-- from when it was queued (its 'u' field, the store's clock, as the due
-- times are; the stream id's time when it has none). Without retries due,
-- new entries alone, as they come.
if #out < want then
  local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[7], 'WITHSCORES', 'LIMIT', 0, want - #out)
  local fresh = want - #out
  local order = {}
  if #due > 0 then
    local last = nil
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local name, lid = nil, nil
      for j = 1, #g, 2 do
        if g[j] == 'name' then name = g[j+1] elseif g[j] == 'last-delivered-id' then lid = g[j+1] end
      end
      if name == ARGV[1] then last = lid end
    end
    local nxt = {}
    if last then nxt = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', want - #out) end
    local function queued(e)
      local f = e[2] or {}
      for j = 1, #f, 2 do
        if f[j] == 'u' and #f[j+1] > 6 then return tonumber(string.sub(f[j+1], 1, -7)) end
      end
      return tonumber(string.match(e[1], '^(%d+)')) or 0
    end
    local i, j = 1, 1
    fresh = 0
    while #order < want - #out and (i <= #due or j <= #nxt) do
      if i <= #due and (j > #nxt or tonumber(due[i+1]) < queued(nxt[j])) then
        order[#order+1] = due[i]
        i = i + 2
      else
        order[#order+1] = false
        fresh = fresh + 1
        j = j + 1
      end
    end
  end
  local new = {}
  if fresh > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', fresh, 'STREAMS', KEYS[1], '>')
    if r then new = r[1][2] end
  end
  if #due == 0 then
    for _, e in ipairs(new) do add(e) end
  else
    local n = 1
    for _, sid in ipairs(order) do
      if sid then
        redis.call('ZREM', KEYS[4], sid)
        local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, sid, 'FORCE')
        if got[1] and got[1][1] then
          add(got[1])
        else
          redis.call('HDEL', KEYS[2], sid) -- gone from the stream meanwhile
        end
      else
        add(new[n])
        n = n + 1
      end
    end
  end
end
if #sids > 0 then
  redis.call('SET', KEYS[3], table.concat(sids, ','), 'PX', ARGV[3])
elseif prev then
  redis.call('DEL', KEYS[3])
end
return out
`)

// claimArgs are the claim script's keys and arguments.
func (l *lane) claimArgs(max int, token string) ([]string, []any) {
	r := l.r
	return []string{l.stream, l.att, r.claimPrefix + token, l.due, r.refs, r.sizes, r.stored},
		[]any{groupName, r.consumer, r.idle.Milliseconds(), max, r.bodyPrefix, releasedIdle.Milliseconds(), r.now().UnixMilli()}
}

// claimToken returns the token of the lane's claim to send again, or a new
// one.
func (l *lane) claimToken() string {
	r := l.r
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	token := r.retryClaim[l.name]
	delete(r.retryClaim, l.name)
	if token == "" {
		token = rand.Text()
	}
	return token
}

// Claim implements queue.Claimer. It first takes over the lane's entries
// idle past the visibility timeout (a dead consumer's, or released ones),
// then hands out due retries and new entries, oldest due first. Bodies
// stay in Redis: Body fetches them.
func (l *lane) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	r := l.r
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, nil
	}
	token := l.claimToken()
	keys, args := l.claimArgs(max, token)
	run := func() ([]any, error) {
		return claimScript.Run(ctx, r.client, keys, args...).Slice()
	}
	res, err := run()
	if isNoGroup(err) { // a lane nothing was admitted to yet, or Redis lost its data: a new group
		if err = l.ensureGroup(ctx); err == nil {
			res, err = run()
		}
	}
	r.answered(err)
	if err != nil {
		if unreachable(err) { // it may have run: the next claim sends it again
			r.claimMu.Lock()
			r.retryClaim[l.name] = token
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
	damaged := func(why string) *queue.Entry { return &queue.Entry{ID: sidID, Payload: sidID, Damaged: why} }
	if len(parts) < 4 {
		return damaged(fmt.Sprintf("unexpected claim reply %v", item))
	}
	fields, err := fieldMap(parts[1])
	if err != nil {
		return damaged(err.Error())
	}
	e, err := entryOf(sid, fields)
	if err != nil {
		d := damaged(err.Error())
		if id := fields["i"]; parseID(id) == sid {
			d.ID = id // a delivery of a payload fanned out: the id its lane knows it by
		}
		return d
	}
	if parseID(e.ID) == "" {
		e.Damaged = fmt.Sprintf("stream entry %s has a malformed entry id %q", sid, e.ID)
		e.ID, e.Payload = sidID, sidID
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
		ID:          f["i"],
		Key:         f["k"],
		Destination: f["t"],
		Request: queue.RequestMeta{
			RawQuery:     f["q"],
			ContentType:  f["c"],
			UserAgent:    f["a"],
			ForwardedFor: f["x"],
			TraceParent:  f["p"],
			TraceState:   f["w"],
		},
		Received: unstamp(f["r"]),
		Queued:   unstamp(f["u"]),
	}
	if h := f["h"]; h != "" {
		headers, _, err := queue.ReadHeaders([]byte(h))
		if err != nil {
			return nil, err
		}
		e.Request.Headers = headers
	}
	if e.ID == "" {
		id, err := formatID(sid)
		if err != nil {
			return nil, err
		}
		e.ID = id
	}
	e.Payload = payloadOf(e.ID)
	return e, nil
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

// reclaimScript resets the idle time of entries this consumer holds: to 0
// (Extend) or past any visibility timeout (Release, so any consumer's next
// Claim takes them at once). Entries another consumer took over are left
// alone and reported.
//
//	KEYS[1]  the lane's stream, {p}:q[:L]
//	KEYS[2]  the location hash, {p}:loc
//	ARGV[1]  the consumer group
//	ARGV[2]  this consumer
//	ARGV[3]  the idle time to give, ms
//	ARGV[4..] pairs of (entry id, the stream id parsed from it)
//	returns  the entry ids this consumer does not hold
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

// reclaim resets the idle time of the held entries in ids and returns the
// ids this consumer no longer holds.
func (l *lane) reclaim(ctx context.Context, ids []string, idle time.Duration) ([]string, error) {
	r := l.r
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 3+2*len(ids))
	args = append(args, groupName, r.consumer, idle.Milliseconds())
	for _, id := range ids {
		args = append(args, id, parseID(id))
	}
	lost, err := reclaimScript.Run(ctx, r.client, []string{l.stream, r.loc}, args...).StringSlice()
	if isNoGroup(err) {
		return ids, nil // the group, and every claim, is gone
	}
	return lost, err
}

// Extend implements queue.Claimer: it resets the idle time of the entries
// this consumer holds, so no other consumer takes them over. Ids it no
// longer holds (delivered, or taken over after the visibility timeout) are
// reported with ErrNotFound after the others are extended.
func (l *lane) Extend(ctx context.Context, ids []string) error {
	if err := l.r.usable(ctx); err != nil {
		return err
	}
	lost, err := l.reclaim(ctx, ids, 0)
	if err != nil {
		return fmt.Errorf("redis store: extend: %w", err)
	}
	if len(lost) > 0 {
		return fmt.Errorf("redis store: extend: %d of %d claims not held any more (e.g. %s): %w",
			len(lost), len(ids), lost[0], queue.ErrNotFound)
	}
	return nil
}

// Release implements queue.Claimer: the entries stay pending but look idle
// past any visibility timeout, so the lane's next Claim of any consumer
// takes them. Ids this consumer does not hold are skipped.
func (l *lane) Release(ctx context.Context, ids []string) error {
	if err := l.r.usable(ctx); err != nil {
		return err
	}
	if _, err := l.reclaim(ctx, ids, releasedIdle); err != nil {
		return fmt.Errorf("redis store: release: %w", err)
	}
	l.r.forgetMoved(ids...)
	return nil
}

// retryScript ends this consumer's claim on a failed entry: it records the
// attempt (in a hash by stream id, because stream entries cannot change),
// acknowledges the entry (it stays in the stream, in no pending
// list, so no takeover hands it out) and lists it in {p}:due under the
// time it is due, where any consumer's claim finds it then. Sent again
// after it ran (a lost reply), it finds the entry listed and does nothing.
//
//	KEYS[1]  the lane's stream, {p}:q[:L]
//	KEYS[2]  the lane's attempts hash, {p}:att[:L]
//	KEYS[3]  the location hash, {p}:loc
//	KEYS[4]  the lane's retries waiting, {p}:due[:L]
//	ARGV[1]  the consumer group
//	ARGV[2]  this consumer
//	ARGV[3]  the entry id
//	ARGV[4]  the stream id parsed from it
//	ARGV[5]  the attempt: "attempts status error" (formatAttempt)
//	ARGV[6]  when it is due, Unix ms
//	returns  1, or 0 when this consumer does not hold it (delivered, or
//	         taken over)
var retryScript = goredis.NewScript(resolveLua + `
local sid = resolve(KEYS[3], ARGV[3], ARGV[4])
if sid == '' then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], sid, sid, 1)
if not (p[1] and p[1][2] == ARGV[2]) then
  if redis.call('ZSCORE', KEYS[4], sid) then return 1 end
  return 0
end
if #redis.call('XRANGE', KEYS[1], sid, sid) == 0 then return 0 end
redis.call('HSET', KEYS[2], sid, ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], sid)
redis.call('ZADD', KEYS[4], ARGV[6], sid)
return 1
`)

// Retry implements queue.Claimer.
func (l *lane) Retry(ctx context.Context, e *queue.Entry, due time.Time) error {
	r := l.r
	if err := r.usable(ctx); err != nil {
		return err
	}
	attempt := formatAttempt(e)
	v, err := r.runScript(ctx, smallCall+len(attempt), retryScript, []string{l.stream, l.att, r.loc, l.due},
		[]any{groupName, r.consumer, e.ID, parseID(e.ID), attempt, due.UnixMilli()})
	n, _ := v.(int64)
	if err != nil {
		return fmt.Errorf("redis store: retrying %s: %w", e.ID, err)
	}
	r.forgetMoved(e.ID)
	if n == 0 {
		return fmt.Errorf("retrying %s: %w", e.ID, queue.ErrNotFound)
	}
	return nil
}

// NextDue implements queue.Claimer: the earliest score in the lane's
// {p}:due[:L] (a claim takes what it hands out off the list, so nothing
// there is held).
func (l *lane) NextDue(ctx context.Context) (time.Time, error) {
	r := l.r
	if err := r.usable(ctx); err != nil {
		return time.Time{}, err
	}
	first, err := r.client.ZRangeWithScores(ctx, l.due, 0, 0).Result()
	r.answered(err)
	if err != nil {
		return time.Time{}, fmt.Errorf("redis store: next due retry: %w", err)
	}
	if len(first) == 0 {
		return time.Time{}, nil
	}
	return time.UnixMilli(int64(first[0].Score)), nil
}

// ackScript removes a delivered entry that was replayed, or is one of its
// payload's several deliveries: XACK, XDEL, its bookkeeping, and its hold
// on the body, which goes with the payload's last delivery. (The one
// delivery of a payload, never replayed, is acknowledged with plain
// commands: queueAcks.)
//
//	KEYS[1]  the lane's stream, {p}:q[:L]
//	KEYS[2]  the lane's attempts hash, {p}:att[:L]
//	KEYS[3]  the location hash, {p}:loc
//	KEYS[4]  the references hash, {p}:rc, KEYS[5] the sizes hash, {p}:sz,
//	KEYS[6]  the stored total, {p}:stored
//	ARGV[1]  the consumer group
//	ARGV[2]  the entry id
//	ARGV[3]  the stream id parsed from it
//	ARGV[4]  the body key prefix, {p}:b:
//	returns  1, or 0 when the entry's stream id is unknown
var ackScript = goredis.NewScript(resolveLua + unrefLua + `
local sid = resolve(KEYS[3], ARGV[2], ARGV[3])
if sid == '' then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], sid)
if redis.call('XDEL', KEYS[1], sid) == 1 then
  unref(KEYS[4], KEYS[5], KEYS[6], ARGV[4], ARGV[2])
end
redis.call('HDEL', KEYS[2], sid)
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
`)

// Ack implements queue.Claimer. Acking an id that is no longer queued is
// not an error.
func (l *lane) Ack(ctx context.Context, id string) error {
	r := l.r
	if err := r.usable(ctx); err != nil {
		return err
	}
	if r.isMoved(id) || fannedOut(id) {
		// a replayed entry (the script finds its stream id and drops the
		// mapping), or one sharing its body: in one step
		if _, err := r.runScript(ctx, smallCall, ackScript, []string{l.stream, l.att, r.loc, r.refs, r.sizes, r.stored},
			[]any{groupName, id, parseID(id), r.bodyPrefix}); err != nil {
			return fmt.Errorf("redis store: ack %s: %w", id, err)
		}
		r.forgetMoved(id)
		return nil
	}
	// The common case needs no script, which costs Redis more than the
	// commands it would run: see queueAcks.
	call := &pipeCall{ctx: ctx, size: smallCall, ack: id, lane: l}
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
// delete the entries, let go of their bodies, acknowledge them, forget
// their attempts. Each is a no-op for an entry another process got to
// first. They are not atomic, so the order matters: cut off after XDEL,
// the pending entries left behind point at nothing and the next claim of
// the lane drops them with their holds on the bodies and attempts; the
// bodies go only after the entries, so no queued entry is ever without
// one; an entry acknowledged but not deleted would sit in the stream for
// good. A plain ack is of a payload's only delivery, so it holds the body
// alone, or with the payload's record (releaseScript, which also takes the
// size off; a claim that drops the entry again lets go once more, which
// changes nothing while the count is at most one).
//
// The acks of a lane share one command of each kind. Deleting the stream's
// first entry makes Redis look for the new first one, stepping over every
// entry deleted before it in the same stream node (up to a hundred); one
// XDEL of many ids does that once, not once per id.
func (r *Store) queueAcks(pipe goredis.Pipeliner, acks []*pipeCall, eval bool) []goredis.Cmder {
	ctx := context.Background() // the pipeline's context is the one that counts
	var lanes []*lane
	sids := make(map[*lane][]string)
	ids := make([]string, len(acks))
	for i, call := range acks {
		l := call.lane
		if _, ok := sids[l]; !ok {
			lanes = append(lanes, l)
		}
		sids[l] = append(sids[l], parseID(call.ack))
		ids[i] = call.ack
	}
	var cmds []goredis.Cmder
	for _, l := range lanes {
		cmds = append(cmds, pipe.XDel(ctx, l.stream, sids[l]...))
	}
	cmds = append(cmds, r.queueRelease(pipe, eval, ids))
	for _, l := range lanes {
		cmds = append(cmds, pipe.XAck(ctx, l.stream, groupName, sids[l]...), pipe.HDel(ctx, l.att, sids[l]...))
	}
	return cmds
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

// buryScript moves a queued entry to the dead letters with its last
// attempt and time of death, and out of the queue, in one step. It copies
// whatever fields the entry has, so a damaged one is buried too. The body
// key stays: the dead letter has it, and holds it as the entry did.
//
//	KEYS[1]  the lane's stream, {p}:q[:L]
//	KEYS[2]  the lane's attempts hash, {p}:att[:L]
//	KEYS[3]  the location hash, {p}:loc
//	KEYS[4]  the dead index, {p}:dead
//	KEYS[5]  the dead letter's hash, {p}:dead:<id>
//	KEYS[6]  the died index, {p}:deadt
//	ARGV[1]  the consumer group
//	ARGV[2]  the entry id
//	ARGV[3]  the stream id parsed from it
//	ARGV[4]  attempts, ARGV[5] last status, ARGV[6] last error
//	ARGV[7]  died (stamp)
//	ARGV[8]  died (Unix ms), its score in KEYS[6]
//	returns  1, or 0 when the entry is not queued
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

// Bury implements queue.Claimer. It buries the stored entry, whatever its fields,
// with e's attempt, and sets e.Died.
func (l *lane) Bury(ctx context.Context, e *queue.Entry) error {
	r := l.r
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
		[]string{l.stream, l.att, r.loc, r.deadIdx, r.deadPrefix + e.ID, r.deadTimes},
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
