package redis

import (
	"context"

	goredis "github.com/redis/go-redis/v9"
)

// The bytes kept (max_stored). Two keys in the relay's hash tag hold them:
// the sizes hash {p}:sz (payload id -> queue.StoredSize of the payload) and
// the total {p}:stored. The admit script adds a payload's size to both,
// once however many lanes it fans out to; whatever frees a payload's body
// (the last of its deliveries acked, or its last dead letter deleted,
// trimmed or evicted) also runs unstoreLua for the payload. A burial or a
// replay keeps the id, the body and the size. Taking the size off by the
// payload's field makes it idempotent: an ack sent twice, or by two
// instances, counts once.
//
// One case leaves a size behind: an ack pipeline cut off between the
// body's DEL and the sizes' removal, when the entry had left the group
// too. The total then counts a body that is gone, on the safe side of the
// bound, until the next time the sizes are reset (FLUSHDB).

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
// references hash {p}:rc holds, for a payload fanned out to several lanes,
// how many of its deliveries are queued or dead (no field: one). The last
// one frees the body and its size. Callers run it once per delivery they
// actually removed (XDEL, ZREM answered 1), so that a delivery removed
// twice counts once.
const unrefLua = unstoreLua + `
local function payloadof(id)
  return string.match(id, '^([^~]*)')
end
local function unref(rc, sz, total, bodyprefix, id)
  local payload = payloadof(id)
  local n = tonumber(redis.call('HGET', rc, payload) or '1')
  if n > 1 then
    redis.call('HSET', rc, payload, n - 1)
    return
  end
  redis.call('HDEL', rc, payload)
  redis.call('DEL', bodyprefix .. payload)
  unstore(sz, total, payload)
end
`

// unstoreScript takes the sizes of delivered payloads off the total.
//
//	KEYS[1]  the sizes hash, {p}:sz
//	KEYS[2]  the total, {p}:stored
//	ARGV     the entry ids
var unstoreScript = goredis.NewScript(unstoreLua + `
for _, id in ipairs(ARGV) do unstore(KEYS[1], KEYS[2], id) end
return 1
`)

// queueUnstore adds the removal of ids' sizes to pipe (the acks' pipeline).
func (r *Store) queueUnstore(pipe goredis.Pipeliner, eval bool, ids []string) goredis.Cmder {
	ctx := context.Background() // the pipeline's context is the one that counts
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	keys := []string{r.sizes, r.stored}
	if eval {
		return unstoreScript.Eval(ctx, pipe, keys, args...)
	}
	return unstoreScript.EvalSha(ctx, pipe, keys, args...)
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
