package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hookrelay/caddy-webhook-relay/queue"

	goredis "github.com/redis/go-redis/v9"
)

// Records (history). A payload's record is the hash {p}:h:<pid>, written
// by the admit script with the payload (see recordOf for its fields),
// listed in {p}:hist while it exists and in {p}:hdone, by when it was
// done, while every delivery is delivered or dead. It holds the body as a
// delivery does (unrefLua), and counts queue.RecordCharge in {p}:stored.
//
// What changes (a delivery's state and attempts, the attempts kept) lives
// in fields of its own, changed by scripts that need no JSON: two
// instances recording attempts of two deliveries of one payload at once
// each change their own delivery's field, atomically. The record's State
// and Done are worked out on reading (Record.Settle), and Done also by
// the scripts for {p}:hdone (settleLua), the same way.

// settleLua lists the record in the done records, under the latest done
// time of its deliveries, when every delivery is delivered or dead, and
// out of them otherwise, as Record.Settle sets Done.
var settleLua = `
local function settle(rec, hdone, payload)
  local all = redis.call('HGETALL', rec)
  local open, last = false, nil
  for j = 1, #all, 2 do
    if string.sub(all[j], 1, 2) == 'd:' then
      local st, done = string.match(all[j+1], '^(%S+) %d+ (%d+)$')
      if st ~= '` + queue.StateDelivered + `' and st ~= '` + queue.StateDead + `' then
        open = true
      elseif not last or done > last then
        last = done
      end
    end
  end
  if open or not last then
    redis.call('HDEL', rec, 'z')
    redis.call('ZREM', hdone, payload)
  else
    redis.call('HSET', rec, 'z', last)
    redis.call('ZADD', hdone, tonumber(string.sub(last, 1, -7)), payload)
  end
end
`

// requeuedLua marks the delivery id queued again in its payload's record,
// if it has one (a replay): Record.Requeued.
var requeuedLua = `
local function requeued(recprefix, hdone, id)
  local payload = string.match(id, '^([^~]*)')
  local field = 'd:' .. (string.match(id, '^[^~]*~(.*)$') or '')
  local rec = recprefix .. payload
  local v = redis.call('HGET', rec, field)
  if not v then return end
  redis.call('HSET', rec, field, '` + queue.StateQueued + ` ' .. (string.match(v, '^%S+ (%d+)') or '0') .. ' 0')
  redis.call('HDEL', rec, 'z')
  redis.call('ZREM', hdone, payload)
end
`

// attemptedScript records an attempt in a record: Record.Attempted. The
// attempts are numbered from 1 (n counts them); the first and the latest
// MaxRecordAttempts-1 are kept.
//
//	KEYS[1]  the record, {p}:h:<pid>
//	KEYS[2]  the done records, {p}:hdone
//	ARGV[1]  the delivery's field, d:<lane> ("d:" for a payload's one delivery)
//	ARGV[2]  the state the attempt left it in
//	ARGV[3]  when it was made (stamp)
//	ARGV[4]  the attempt (formatRecordAttempt)
//	ARGV[5]  queue.MaxRecordAttempts
//	ARGV[6]  the payload id
//	returns  1, or 0 when there is no such record or delivery
var attemptedScript = goredis.NewScript(settleLua + `
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local attempts = tonumber(string.match(v, '^%S+ (%d+)') or '0') + 1
local done = '0'
if ARGV[2] == '` + queue.StateDelivered + `' or ARGV[2] == '` + queue.StateDead + `' then done = ARGV[3] end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. attempts .. ' ' .. done)
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'a:' .. n, ARGV[4])
local max = tonumber(ARGV[5])
if n > max then redis.call('HDEL', KEYS[1], 'a:' .. (n - max + 1)) end
settle(KEYS[1], KEYS[2], ARGV[6])
return 1
`)

// Attempted implements queue.Recorder: lane "".
func (r *Store) Attempted(ctx context.Context, e *queue.Entry, a queue.Attempt, state string) error {
	return r.def.Attempted(ctx, e, a, state)
}

// TrimHistory implements queue.Recorder: the records are the store's.
func (r *Store) TrimHistory(ctx context.Context, limit int) (int, error) {
	return r.trimHistory(ctx, limit)
}

// Attempted implements queue.Recorder. It changes only e's delivery and
// the attempts kept, in one script, so instances recording attempts of
// the same payload at once do not undo each other's.
func (l *lane) Attempted(ctx context.Context, e *queue.Entry, a queue.Attempt, state string) error {
	r := l.r
	if err := r.usable(ctx); err != nil {
		return err
	}
	payload, field := deliveryField(e.ID)
	att := formatRecordAttempt(a)
	_, err := r.runScript(ctx, smallCall+len(att), attemptedScript, []string{r.recordPrefix + payload, r.hdone},
		[]any{field, state, stamp(a.At), att, queue.MaxRecordAttempts, payload})
	if err != nil {
		return fmt.Errorf("redis store: recording an attempt of %s: %w", e.ID, err)
	}
	return nil
}

// TrimHistory implements queue.Recorder: the records are the store's.
func (l *lane) TrimHistory(ctx context.Context, limit int) (int, error) {
	return l.r.trimHistory(ctx, limit)
}

// deliveryField returns the payload of delivery id and the field of its
// record that holds the delivery's state.
func deliveryField(id string) (payload, field string) {
	payload, lane, _ := strings.Cut(id, queue.DeliverySep)
	return payload, "d:" + lane
}

// formatRecordAttempt keeps an attempt in one hash value: "at status
// duration len(destination) destination" and the error, cut to
// queue.MaxAttemptError bytes as Record.Attempted cuts it.
func formatRecordAttempt(a queue.Attempt) string {
	if len(a.Error) > queue.MaxAttemptError {
		n := queue.MaxAttemptError
		for n > 0 && !utf8.RuneStart(a.Error[n]) {
			n--
		}
		a.Error = a.Error[:n]
	}
	return stamp(a.At) + " " + strconv.Itoa(a.Status) + " " + strconv.FormatInt(a.DurationMS, 10) + " " +
		strconv.Itoa(len(a.Destination)) + " " + a.Destination + a.Error
}

func parseRecordAttempt(s string) (queue.Attempt, bool) {
	parts := strings.SplitN(s, " ", 5)
	if len(parts) != 5 {
		return queue.Attempt{}, false
	}
	status, err1 := strconv.Atoi(parts[1])
	dur, err2 := strconv.ParseInt(parts[2], 10, 64)
	n, err3 := strconv.Atoi(parts[3])
	if err1 != nil || err2 != nil || err3 != nil || n < 0 || n > len(parts[4]) {
		return queue.Attempt{}, false
	}
	return queue.Attempt{At: unstamp(parts[0]).UTC(), Status: status, DurationMS: dur,
		Destination: parts[4][:n], Error: parts[4][n:]}, true
}

// recordOf makes the record of payload id of its hash's fields:
//
//	k q c a x h p w  as a stream entry's (absent when empty)
//	r  received (stamp); s the body's length
//	t  the one lane of a payload delivered to one (absent for ""), as in
//	   a stream entry; l the lanes of one fanned out, a JSON array, in
//	   the order of the record's destinations
//	d:<lane>  a delivery's "state attempts done" (done a stamp, 0 while not
//	          done); "d:" alone for a payload's one delivery
//	n  the attempts made; a:<i> the i-th (formatRecordAttempt), the first
//	   and the latest queue.MaxRecordAttempts-1 kept
//	z  when the record was done (stamp), while it is (for trims)
//
// State and Done are worked out from the deliveries (Record.Settle).
func recordOf(id string, f map[string]string) (*queue.Record, error) {
	lanes := []string{f["t"]}
	if l, ok := f["l"]; ok {
		if err := json.Unmarshal([]byte(l), &lanes); err != nil || len(lanes) == 0 {
			return nil, fmt.Errorf("redis store: record %s: unreadable lanes %q", id, l)
		}
	}
	f["i"] = id
	e, err := entryOf("", f)
	if err != nil {
		return nil, fmt.Errorf("redis store: record %s: %w", id, err)
	}
	e.Destination, e.Destinations = lanes[0], lanes
	e.Received = e.Received.UTC() // a record's times are UTC, whatever the zone of the process
	rec := queue.NewRecord(e)
	rec.BodySize, _ = strconv.Atoi(f["s"])
	for i := range rec.Destinations {
		d := &rec.Destinations[i]
		field := "d:"
		if len(lanes) > 1 {
			field += d.Destination
		}
		parts := strings.Fields(f[field])
		if len(parts) != 3 {
			continue
		}
		d.State = parts[0]
		d.Attempts, _ = strconv.Atoi(parts[1])
		if parts[2] != "0" {
			d.Done = unstamp(parts[2]).UTC()
		}
	}
	var seqs []int
	for name := range f {
		if n, ok := strings.CutPrefix(name, "a:"); ok {
			if i, err := strconv.Atoi(n); err == nil {
				seqs = append(seqs, i)
			}
		}
	}
	slices.Sort(seqs)
	for _, i := range seqs {
		if a, ok := parseRecordAttempt(f["a:"+strconv.Itoa(i)]); ok {
			rec.Attempts = append(rec.Attempts, a)
		}
	}
	n, _ := strconv.Atoi(f["n"])
	rec.AttemptsLeftOut = max(n-len(rec.Attempts), 0)
	rec.Settle()
	return rec, nil
}

// trimHistoryScript drops up to limit records done by the cutoff. The
// done index has milliseconds; a record done in the cutoff's millisecond
// goes by its exact done time (z).
//
//	KEYS[1]  the records, {p}:hist, KEYS[2] the done records, {p}:hdone
//	KEYS[3]  the references hash, {p}:rc, KEYS[4] the sizes hash, {p}:sz,
//	KEYS[5]  the stored total, {p}:stored
//	ARGV[1]  the body key prefix, {p}:b:
//	ARGV[2]  the cutoff, Unix ms, ARGV[3] the cutoff (stamp)
//	ARGV[4]  limit: at most this many dropped
//	returns  how many were dropped
var trimHistoryScript = goredis.NewScript(dropRecordLua + `
local limit, n, skip = tonumber(ARGV[4]), 0, 0
while n < limit do
  local r = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', skip, limit - n)
  if #r == 0 then break end
  for _, id in ipairs(r) do
    local t = redis.call('HGET', recordkey(ARGV[1], id), 'z')
    if t and t > ARGV[3] then
      skip = skip + 1
    else
      if t then n = n + 1 end
      droprecord(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], id)
    end
  end
end
return n
`)

func (r *Store) trimHistory(ctx context.Context, limit int) (int, error) {
	if err := r.usable(ctx); err != nil {
		return 0, err
	}
	if limit <= 0 {
		return 0, nil
	}
	cutoff := r.now().Add(-r.History())
	n, err := trimHistoryScript.Run(ctx, r.client, []string{r.hist, r.hdone, r.refs, r.sizes, r.stored},
		r.bodyPrefix, cutoff.UnixMilli(), stamp(cutoff), limit).Int()
	if err != nil {
		return n, fmt.Errorf("redis store: trimming the history: %w", err)
	}
	return n, nil
}

// eventBatch is how many records the first round trip of Events reads;
// each further one reads twice as many, up to eventBatchMax.
const (
	eventBatch    = 16
	eventBatchMax = 512
)

// Events implements queue.Store. It reads the records newest first in
// rounds (the ids, then their hashes in one pipeline), and filters them
// here.
func (r *Store) Events(ctx context.Context, q queue.EventQuery) ([]*queue.Record, string, error) {
	if err := r.usable(ctx); err != nil {
		return nil, "", err
	}
	scan := q.Scan
	if scan <= 0 {
		scan = queue.DefaultEventScan
	}
	out := []*queue.Record{}
	if q.Limit <= 0 {
		return out, "", nil
	}
	top := "+"
	if q.Before != "" {
		top = "(" + q.Before
	}
	looked, batch := 0, max(q.Limit, eventBatch)
	for {
		n := min(scan-looked, batch)
		batch = min(2*batch, eventBatchMax)
		// one more than it reads, to know whether any is left
		ids, err := r.client.ZRevRangeByLex(ctx, r.hist, &goredis.ZRangeBy{Max: top, Min: "-", Count: int64(n + 1)}).Result()
		if err != nil {
			return nil, "", fmt.Errorf("redis store: listing records: %w", err)
		}
		read := ids[:min(n, len(ids))]
		pipe := r.client.Pipeline()
		hashes := make([]*goredis.MapStringStringCmd, len(read))
		for i, id := range read {
			hashes[i] = pipe.HGetAll(ctx, r.recordPrefix+id)
		}
		if len(read) > 0 {
			if _, err := pipe.Exec(ctx); err != nil {
				return nil, "", fmt.Errorf("redis store: listing records: %w", err)
			}
		}
		for i, id := range read {
			if len(out) >= q.Limit {
				return out, read[i-1], nil
			}
			looked++
			f := hashes[i].Val()
			if len(f) == 0 {
				continue // dropped since the index was read
			}
			rec, err := recordOf(id, f)
			if err != nil {
				return nil, "", err
			}
			if q.Matches(rec) {
				out = append(out, rec)
			}
		}
		if len(ids) <= n {
			return out, "", nil // none left
		}
		last := read[len(read)-1]
		if len(out) >= q.Limit || looked >= scan {
			return out, last, nil
		}
		top = "(" + last
	}
}

// Event implements queue.Store.
func (r *Store) Event(ctx context.Context, id string) (*queue.Record, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	key := r.bodyPrefix + id
	pipe := r.client.Pipeline()
	hash := pipe.HGetAll(ctx, r.recordPrefix+id)
	first := pipe.GetRange(ctx, key, 0, firstChunk-1)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("redis store: record %s: %w", id, err)
	}
	f := hash.Val()
	if len(f) == 0 {
		return nil, fmt.Errorf("record %s: %w", id, queue.ErrNotFound)
	}
	rec, err := recordOf(id, f)
	if err != nil {
		return nil, err
	}
	body, ok, err := r.readBody(ctx, key, first, heapBuffer)
	switch {
	case err != nil:
		return nil, fmt.Errorf("redis store: record %s: %w", id, err)
	case ok:
		rec.Body = body
	default:
		rec.Body = []byte{} // dropped while being read
	}
	return rec, nil
}

// resendScript puts the delivered deliveries of a record back at the end
// of their lanes, as a replay does: under their ids, with new stream ids
// from {p}:ids mapped in {p}:loc, attempts reset, queued now; each one
// holds the body again, and is queued in the record (Record.Requeued). A
// delivery recorded delivered but still in its lane (its ack on its way)
// is left there.
//
//	KEYS[1]  the record, {p}:h:<pid>
//	KEYS[2]  the lanes, {p}:lanes, KEYS[3] the id source, {p}:ids
//	KEYS[4]  the location hash, {p}:loc, KEYS[5] the references hash, {p}:rc
//	KEYS[6]  the done records, {p}:hdone
//	ARGV[1]  now (stamp)
//	ARGV[2]  the stream key prefix, {p}:q, ARGV[3] the consumer group
//	ARGV[4]  the payload id, ARGV[5] the stream id parsed from it
//	returns  how many went back, -1 when there is no such record
var resendScript = goredis.NewScript(laneLua + `
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local lanes = {redis.call('HGET', KEYS[1], 't') or ''}
local l = redis.call('HGET', KEYS[1], 'l')
if l then lanes = cjson.decode(l) end
local meta = {'k', 'q', 'c', 'a', 'x', 'r', 'h', 'p', 'w'}
local v = redis.call('HMGET', KEYS[1], unpack(meta))
local n = 0
for _, lane in ipairs(lanes) do
  local field, id = 'd:', ARGV[4]
  if #lanes > 1 then field, id = 'd:' .. lane, ARGV[4] .. '~' .. lane end
  local st, att = string.match(redis.call('HGET', KEYS[1], field) or '', '^(%S+) (%d+)')
  local q = lanekey(ARGV[2], lane)
  local sid = redis.call('HGET', KEYS[4], id) or ARGV[5]
  if st == '` + queue.StateDelivered + `' and #redis.call('XRANGE', q, sid, sid) == 0 then
    local f = {}
    for j, name in ipairs(meta) do
      if v[j] then f[#f+1] = name; f[#f+1] = v[j] end
    end
    f[#f+1] = 'u'; f[#f+1] = ARGV[1]; f[#f+1] = 'i'; f[#f+1] = id
    if lane ~= '' then f[#f+1] = 't'; f[#f+1] = lane end
    if redis.call('SADD', KEYS[2], lane) == 1 then
      redis.pcall('XGROUP', 'CREATE', q, ARGV[3], '0', 'MKSTREAM')
    end
    sid = redis.call('XADD', KEYS[3], 'MAXLEN', '0', '*', 'x', '')
    redis.call('XADD', q, sid, unpack(f))
    redis.call('HSET', KEYS[4], id, sid)
    redis.call('HSET', KEYS[1], field, '` + queue.StateQueued + ` ' .. att .. ' 0')
    n = n + 1
  end
end
if n > 0 then
  local held = tonumber(redis.call('HGET', KEYS[5], ARGV[4]) or '1')
  redis.call('HSET', KEYS[5], ARGV[4], held + n)
  redis.call('HDEL', KEYS[1], 'z')
  redis.call('ZREM', KEYS[6], ARGV[4])
end
return n
`)

// Resend implements queue.Store. Like a replay, it ignores MaxBacklog.
func (r *Store) Resend(ctx context.Context, id string) (int, error) {
	if err := r.usable(ctx); err != nil {
		return 0, err
	}
	n, err := resendScript.Run(ctx, r.client, []string{r.recordPrefix + id, r.lanes, r.ids, r.loc, r.refs, r.hdone},
		stamp(r.now()), r.stream, groupName, id, parseID(id)).Int()
	switch {
	case err != nil:
		return 0, fmt.Errorf("redis store: resending %s: %w", id, err)
	case n < 0:
		return 0, fmt.Errorf("record %s: %w", id, queue.ErrNotFound)
	}
	return n, nil
}

// Interface guards
var (
	_ queue.Recorder = (*lane)(nil)
	_ queue.Recorder = (*Store)(nil)
)
