package redis

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"

	goredis "github.com/redis/go-redis/v9"
)

// deadFields are what a dead letter listing reads: everything but the body.
var deadFields = []string{"i", "k", "t", "q", "c", "a", "x", "h", "p", "w", "r", "u", "n", "s", "e", "d"}

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
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, r.deadPrefix+id, deadFields...)
		sizes[i] = pipe.StrLen(ctx, r.bodyPrefix+payloadOf(id))
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
		e.BodySize = int(sizes[j].Val())
		out = append(out, e)
	}
	return out, nil
}

// DeadEntry implements Store.
func (r *Store) DeadEntry(ctx context.Context, id string) (*queue.Entry, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	key := r.bodyPrefix + payloadOf(id)
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
	body, ok, err := r.readBody(ctx, key, first, heapBuffer)
	switch {
	case err != nil:
		return nil, fmt.Errorf("redis store: dead letter %s: %w", id, err)
	case ok:
		e.Body = body
	default:
		e.Body = []byte{} // buried without one (a damaged entry)
	}
	e.BodySize = len(e.Body)
	return e, nil
}

// deleteDeadScript removes one dead letter, and its payload's body with
// the payload's last delivery.
//
//	KEYS[1]  the dead index, {p}:dead
//	KEYS[2]  the dead letter's hash, {p}:dead:<id>
//	KEYS[3]  the died index, {p}:deadt
//	KEYS[4]  the references hash, {p}:rc
//	KEYS[5]  the sizes hash, {p}:sz, KEYS[6] the stored total, {p}:stored
//	ARGV[1]  the entry id
//	ARGV[2]  the body key prefix, {p}:b:
//	returns  1, or 0 when there is no such dead letter
var deleteDeadScript = goredis.NewScript(unrefLua + `
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2])
unref(KEYS[4], KEYS[5], KEYS[6], ARGV[2], ARGV[1])
return 1
`)

// DeleteDead implements Store.
func (r *Store) DeleteDead(ctx context.Context, id string) error {
	if err := r.usable(ctx); err != nil {
		return err
	}
	n, err := deleteDeadScript.Run(ctx, r.client,
		[]string{r.deadIdx, r.deadPrefix + id, r.deadTimes, r.refs, r.sizes, r.stored}, id, r.bodyPrefix).Int()
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

// replayScript puts dead letters back at the end of their lanes (field t)
// under their original ids, attempts reset, queued now. It moves only
// their metadata: the body keys stay, and so do the holds on them. Their
// new stream ids come from {p}:ids, as an admit's do. Their payloads'
// records, if any, have them queued again (requeuedLua).
//
//	KEYS[1]  the lanes, {p}:lanes
//	KEYS[2]  the dead index, {p}:dead
//	KEYS[3]  the location hash, {p}:loc
//	KEYS[4]  the died index, {p}:deadt
//	KEYS[5]  the id source, {p}:ids
//	KEYS[6]  the done records, {p}:hdone
//	KEYS[7..] one dead letter hash per id, {p}:dead:<id>, in ARGV's order
//	ARGV[1]  now (stamp)
//	ARGV[2]  the stream key prefix, {p}:q, ARGV[3] the consumer group
//	ARGV[4]  the record key prefix, {p}:h:
//	ARGV[5..] the entry ids
//	returns  how many went back
var replayScript = goredis.NewScript(laneLua + requeuedLua + `
local meta = {'k', 't', 'q', 'c', 'a', 'x', 'r', 'h', 'p', 'w'}
local n = 0
for i = 5, #ARGV do
  local id, key = ARGV[i], KEYS[i+2]
  if redis.call('EXISTS', key) == 1 then
    local v = redis.call('HMGET', key, unpack(meta))
    local f = {}
    for j, name in ipairs(meta) do
      if v[j] then f[#f+1] = name; f[#f+1] = v[j] end
    end
    f[#f+1] = 'u'; f[#f+1] = ARGV[1]; f[#f+1] = 'i'; f[#f+1] = id
    local lane = v[2] or ''
    local q = lanekey(ARGV[2], lane)
    if redis.call('SADD', KEYS[1], lane) == 1 then
      redis.pcall('XGROUP', 'CREATE', q, ARGV[3], '0', 'MKSTREAM')
    end
    local sid = redis.call('XADD', KEYS[5], 'MAXLEN', '0', '*', 'x', '')
    redis.call('XADD', q, sid, unpack(f))
    redis.call('HSET', KEYS[3], id, sid)
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[4], id)
    requeued(ARGV[4], KEYS[6], id)
    n = n + 1
  end
end
return n
`)

// Replay implements Store. Replayed entries join the back of their lanes
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
		keys := []string{r.lanes, r.deadIdx, r.loc, r.deadTimes, r.ids, r.hdone}
		args := []any{now, r.stream, groupName, r.recordPrefix}
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

// trimDeadScript removes up to limit dead letters, oldest death first:
// those died before the cutoff, then the oldest while more than max remain.
// The died index has milliseconds; a letter in the cutoff's millisecond
// goes by its exact time of death. Each letter goes with its hash, both
// index entries and its hold on its payload's body (which goes with the
// payload's last delivery).
//
//	KEYS[1]  the dead index, {p}:dead
//	KEYS[2]  the died index, {p}:deadt
//	KEYS[3]  the sizes hash, {p}:sz, KEYS[4] the stored total, {p}:stored
//	KEYS[5]  the references hash, {p}:rc
//	ARGV[1]  the dead letter hash prefix, {p}:dead:
//	ARGV[2]  the body key prefix, {p}:b:
//	ARGV[3]  max letters to keep, 0 for no bound
//	ARGV[4]  the cutoff, Unix ms, or "" for none
//	ARGV[5]  the cutoff (stamp)
//	ARGV[6]  limit: at most this many removed
//	returns  {{id, key, died stamp, attempts, status, error, destination}...}
var trimDeadScript = goredis.NewScript(unrefLua + `
local limit = tonumber(ARGV[6])
local out = {}
local function remove(id)
  local h = ARGV[1] .. id
  local f = redis.call('HMGET', h, 'k', 'd', 'n', 's', 'e', 't')
  redis.call('DEL', h)
  if redis.call('ZREM', KEYS[1], id) == 1 then unref(KEYS[5], KEYS[3], KEYS[4], ARGV[2], id) end
  redis.call('ZREM', KEYS[2], id)
  out[#out+1] = {id, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or '', f[6] or ''}
end
if ARGV[4] ~= '' then
  local cut, skip = tonumber(ARGV[4]), 0
  while #out < limit do
    local r = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cut, 'WITHSCORES', 'LIMIT', skip, limit - #out)
    if #r == 0 then break end
    for j = 1, #r, 2 do
      local d = redis.call('HGET', ARGV[1] .. r[j], 'd')
      if tonumber(r[j+1]) < cut or (d and d < ARGV[5]) then remove(r[j]) else skip = skip + 1 end
    end
  end
end
local max = tonumber(ARGV[3])
while max > 0 and #out < limit do
  local excess = redis.call('ZCARD', KEYS[1]) - max
  if excess <= 0 then break end
  local r = redis.call('ZRANGE', KEYS[2], 0, math.min(excess, limit - #out) - 1, 'WITHSCORES')
  if #r == 0 then break end
  for j = 1, #r, 2 do remove(r[j]) end
end
return out
`)

// TrimDead implements Store. Letters died in the same millisecond as the
// cutoff are told apart by their exact time of death.
func (r *Store) TrimDead(ctx context.Context, max int, cutoff time.Time, limit int) ([]*queue.Entry, error) {
	if err := r.usable(ctx); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return []*queue.Entry{}, nil
	}
	cutMS, cutStamp := "", ""
	if !cutoff.IsZero() {
		cutMS, cutStamp = strconv.FormatInt(cutoff.UnixMilli(), 10), stamp(cutoff)
	}
	res, err := trimDeadScript.Run(ctx, r.client, []string{r.deadIdx, r.deadTimes, r.sizes, r.stored, r.refs},
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
		e := &queue.Entry{ID: s[0], Payload: payloadOf(s[0]), Key: s[1], Destination: s[6], LastError: s[5], Died: unstamp(s[2])}
		e.Attempts, _ = strconv.Atoi(s[3])
		e.LastStatus, _ = strconv.Atoi(s[4])
		out = append(out, e)
	}
	return out, nil
}
