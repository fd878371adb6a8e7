package redis

import (
	"context"
	"strconv"

	"github.com/hookrelay/caddy-webhook-relay/queue"

	goredis "github.com/redis/go-redis/v9"
)

// The bytes kept (max_stored). Two keys in the relay's hash tag hold them:
// the sizes hash {p}:sz (payload id -> queue.StoredSize of the payload) and
// the total {p}:stored. The admit script adds a payload's size to both,
// once however many lanes it fans out to, and queue.RecordCharge to the
// total when it keeps a record; whatever frees a payload's body (the last
// of its holds let go: see unrefLua) also runs unstoreLua for the payload,
// and whatever drops a record takes its charge off (droprecord). A burial
// or a replay keeps the id, the body and the size. Taking the size off by
// the payload's field makes it idempotent: an ack sent twice, or by two
// instances, counts once.

// unstoreLua takes id's size off the total and out of the sizes hash.
const unstoreLua = `
local function unstore(sz, total, id)
  local n = redis.call('HGET', sz, id)
  if n then
    redis.call('HDEL', sz, id)
    if redis.call('DECRBY', total, n) < 0 then redis.call('SET', total, 0) end
  end
end
`

// unrefLua lets go of one delivery's hold on its payload's body: the
// references hash {p}:rc holds how many of a payload's deliveries are
// queued or dead (no field: one, the usual single delivery). The payload's
// record, while it exists, holds the body too: the last delivery to go
// then leaves the count at 0 for the record's drop to find (droprecord),
// else it frees the body and its size. Callers run it once per delivery
// they actually removed (XDEL, ZREM answered 1), so that a delivery
// removed twice counts once; the plain acks cannot tell (see queueAcks),
// which is harmless while the count is at most one.
//
// A record's key is named after the body prefix ({p}:b: -> {p}:h:, see
// New), so that the scripts that let go of bodies need no more arguments.
const unrefLua = unstoreLua + `
local function payloadof(id)
  return string.match(id, '^([^~]*)')
end
local function recordkey(bodyprefix, payload)
  return string.sub(bodyprefix, 1, -3) .. 'h:' .. payload
end
local function unref(rc, sz, total, bodyprefix, id)
  local payload = payloadof(id)
  local n = tonumber(redis.call('HGET', rc, payload) or '1')
  if n > 1 then
    redis.call('HSET', rc, payload, n - 1)
    return
  end
  if redis.call('EXISTS', recordkey(bodyprefix, payload)) == 1 then
    redis.call('HSET', rc, payload, 0)
    return
  end
  redis.call('HDEL', rc, payload)
  redis.call('DEL', bodyprefix .. payload)
  unstore(sz, total, payload)
end
`

// dropRecordLua forgets the record of payload id: its key, its index
// entries and its charge, and its hold on the body, which goes with it
// when no delivery holds it any more (a count of 0, see unrefLua).
var dropRecordLua = unrefLua + `
local recordcharge = ` + strconv.Itoa(queue.RecordCharge) + `
local function droprecord(hist, hdone, rc, sz, total, bodyprefix, id)
  redis.call('ZREM', hdone, id)
  redis.call('ZREM', hist, id)
  if redis.call('DEL', recordkey(bodyprefix, id)) == 0 then return end
  if redis.call('DECRBY', total, recordcharge) < 0 then redis.call('SET', total, 0) end
  if redis.call('HGET', rc, id) == '0' then
    redis.call('HDEL', rc, id)
    redis.call('DEL', bodyprefix .. id)
    unstore(sz, total, id)
  end
end
`

// releaseScript lets go of the holds of plainly acked deliveries on their
// bodies (queueAcks), as unref does for each; the bodies and sizes freed
// go in one command of each kind, as the plain commands it replaced did.
// With no record at all (history off) it looks up nothing per id: Lua
// calls per id cost Redis more than the plain commands (about 2 µs of
// Redis CPU per ack).
//
//	KEYS[1]  the references hash, {p}:rc, KEYS[2] the sizes hash, {p}:sz,
//	KEYS[3]  the stored total, {p}:stored, KEYS[4] the records, {p}:hist
//	ARGV[1]  the body key prefix, {p}:b:
//	ARGV[2..] the entry ids (each a payload's one delivery)
var releaseScript = goredis.NewScript(unrefLua + `
local ids, bodies = {}, {}
local records = redis.call('EXISTS', KEYS[4]) == 1
for i = 2, #ARGV do
  local id = ARGV[i]
  if records and (redis.call('HEXISTS', KEYS[1], id) == 1 or redis.call('EXISTS', recordkey(ARGV[1], id)) == 1) then
    unref(KEYS[1], KEYS[2], KEYS[3], ARGV[1], id)
  else
    ids[#ids+1] = id
    bodies[#bodies+1] = ARGV[1] .. id
  end
end
if #ids == 0 then return 1 end
redis.call('DEL', unpack(bodies))
-- without records a plain ack's payload has no count, but a resend whose
-- record went may have left one (of 1)
if not records then redis.call('HDEL', KEYS[1], unpack(ids)) end
local total, found = 0, false
for _, n in ipairs(redis.call('HMGET', KEYS[2], unpack(ids))) do
  if n then total, found = total + tonumber(n), true end
end
if found then
  redis.call('HDEL', KEYS[2], unpack(ids))
  if redis.call('DECRBY', KEYS[3], total) < 0 then redis.call('SET', KEYS[3], 0) end
end
return 1
`)

// queueRelease adds the release of ids' bodies to pipe (the acks'
// pipeline).
func (r *Store) queueRelease(pipe goredis.Pipeliner, eval bool, ids []string) goredis.Cmder {
	ctx := context.Background() // the pipeline's context is the one that counts
	args := make([]any, 0, 1+len(ids))
	args = append(args, r.bodyPrefix)
	for _, id := range ids {
		args = append(args, id)
	}
	keys := []string{r.refs, r.sizes, r.stored, r.hist}
	if eval {
		return releaseScript.Eval(ctx, pipe, keys, args...)
	}
	return releaseScript.EvalSha(ctx, pipe, keys, args...)
}

// reportEvicted tells Options.Evicted how many dead letters an admit
// script's reply says gave way: {0, sid, n} or {4, n} (none in {0, sid}).
func (r *Store) reportEvicted(res []any) {
	at := 2
	switch code, _ := res[0].(int64); code {
	case 0:
	case 4:
		at = 1
	default:
		return
	}
	if len(res) <= at || r.evicted == nil {
		return
	}
	if n, _ := res[at].(int64); n > 0 {
		r.evicted(int(n))
	}
}
