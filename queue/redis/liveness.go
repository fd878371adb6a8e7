package redis

import (
	"context"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Liveness: each store keeps a key {p}:alive:<consumer> with a short TTL,
// renewed by a background goroutine, and lists its consumer in the hash
// {p}:lv. A consumer listed there whose key has expired is dead (killed,
// cut off from Redis): another store moves its pending entries to itself,
// released (idle past any visibility timeout), so the next claim of any
// store takes them, and then removes the dead consumer from the group. The
// expiry is Redis's own, so the hosts' clocks do not matter. A consumer
// that is not listed keeps the visibility timeout, which also still bounds
// a live store that is stuck: its key goes on being renewed.
//
// A store whose own key had expired (Redis was unreachable for it, or for
// every store at once) only renews it in that round: the others may have
// been cut off as well and not had the chance to renew theirs.

// DefaultLivenessTTL is how long a store's liveness key lives unless
// renewed; it is renewed every third of that.
const DefaultLivenessTTL = 5 * time.Second

// takeoverBatch bounds the entries moved from one dead consumer in one lane
// in a round.
const takeoverBatch = 1000

// livenessScript renews this consumer's liveness key and takes over the
// pending entries, in every lane, of the listed consumers whose key has
// expired. A dead consumer leaves a lane's group once it holds nothing
// there, and the list once it holds nothing in any.
//
//	KEYS[1]  the lanes, {p}:lanes
//	KEYS[2]  the hash of consumers that keep a liveness key, {p}:lv
//	ARGV[1]  the consumer group
//	ARGV[2]  this consumer
//	ARGV[3]  the liveness key prefix, {p}:alive:
//	ARGV[4]  the liveness TTL, ms
//	ARGV[5]  the idle time Release gives, ms
//	ARGV[6]  at most this many entries taken from one consumer in one lane
//	ARGV[7]  the stream key prefix, {p}:q
//	returns  {entries taken over, consumers removed}
var livenessScript = goredis.NewScript(laneLua + `
local me = ARGV[3] .. ARGV[2]
local was = redis.call('EXISTS', me)
redis.call('SET', me, '1', 'PX', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], '1')
if was == 0 then return {0, 0} end
local taken, removed = 0, 0
local streams = nil
for _, c in ipairs(redis.call('HKEYS', KEYS[2])) do
  if c ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. c) == 0 then
    if not streams then
      streams = {}
      for _, l in ipairs(lanesof(KEYS[1])) do
        local q = lanekey(ARGV[7], l)
        -- a lane whose stream or group is gone (Redis lost its data) holds nothing
        if not redis.pcall('XPENDING', q, ARGV[1], '-', '+', 1).err then streams[#streams+1] = q end
      end
    end
    local holds = false
    for _, q in ipairs(streams) do
      local p = redis.call('XPENDING', q, ARGV[1], '-', '+', tonumber(ARGV[6]), c)
      for _, e in ipairs(p) do
        redis.call('XCLAIM', q, ARGV[1], ARGV[2], 0, e[1], 'IDLE', ARGV[5], 'JUSTID')
        taken = taken + 1
      end
      if #redis.call('XPENDING', q, ARGV[1], '-', '+', 1, c) == 0 then
        redis.call('XGROUP', 'DELCONSUMER', q, ARGV[1], c)
      else
        holds = true
      end
    end
    if not holds then
      redis.call('HDEL', KEYS[2], c)
      removed = removed + 1
    end
  end
end
return {taken, removed}
`)

// keepAlive renews the liveness key and takes over dead consumers' entries
// every third of the TTL until the store closes or stopAlive is called,
// starting with a round at once unless New just ran one.
func (r *Store) keepAlive(ranFirst bool) {
	tick := time.NewTicker(r.aliveTTL / 3)
	defer tick.Stop()
	for {
		if !ranFirst {
			guard.Run(r.log, "the redis store's liveness", func() { r.liveness(context.Background()) })
		}
		ranFirst = false
		select {
		case <-tick.C:
		case <-r.stop:
			return
		case <-r.aliveStop:
			return
		}
	}
}

// liveness runs one round of keepAlive.
func (r *Store) liveness(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, r.aliveTTL/2)
	defer cancel()
	res, err := livenessScript.Run(ctx, r.client, []string{r.lanes, r.liveSet},
		groupName, r.consumer, r.alivePrefix, r.aliveTTL.Milliseconds(), releasedIdle.Milliseconds(), takeoverBatch,
		r.stream).Int64Slice()
	r.answered(err)
	if err != nil && r.closed.Load() {
		return
	}
	if err != nil {
		if isNoGroup(err) {
			_ = r.def.ensureGroup(ctx) // Redis lost its data; the claims recreate the groups too
		}
		r.aliveErr.Fail(r.log, "cannot renew this instance's liveness key in Redis; other instances may take over its payloads", err)
		return
	}
	r.aliveErr.Ok(r.log, "liveness key renewed again")
	if len(res) == 2 && (res[0] > 0 || res[1] > 0) {
		r.log.Info("took over the payloads of instances that stopped (their liveness key expired)",
			zap.Int64("payloads", res[0]), zap.Int64("consumers_removed", res[1]))
	}
}

// stopAlive stops renewing the liveness key, which then expires.
func (r *Store) stopAlive() {
	r.aliveOnce.Do(func() { close(r.aliveStop) })
}
