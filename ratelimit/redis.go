package ratelimit

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
	goredis "github.com/redis/go-redis/v9"
)

// Redis is a Limiter shared by every instance on one Redis: each Take runs
// github.com/go-redis/redis_rate's GCRA script on one key, with Redis's own
// clock, so instances need no synchronised clocks and their starts together
// stay within the rate. One key makes it work on a Cluster as on a single
// server or through Sentinel.
//
// When Redis cannot be reached, Take returns the error and takes nothing:
// no attempt starts without the shared limit's consent.
type Redis struct {
	r     Rate
	key   string
	lim   *redis_rate.Limiter
	limit redis_rate.Limit
}

// NewRedis returns a limiter for r on client, keeping its state in the
// string key (which expires one Interval after the last start). The key
// should carry the relay's hash tag, e.g. "{webhook_relay:hooks}:rate:archive".
func NewRedis(client goredis.UniversalClient, key string, r Rate) *Redis {
	return &Redis{
		r:     r,
		key:   key,
		lim:   redis_rate.NewLimiter(exactKey{client}),
		limit: redis_rate.Limit{Rate: r.N, Period: r.Per, Burst: 1},
	}
}

// Take implements Limiter.
func (l *Redis) Take(ctx context.Context) (time.Duration, error) {
	res, err := l.lim.Allow(ctx, l.key, l.limit)
	if err != nil {
		return 0, fmt.Errorf("rate limit %s: redis: %w", l.r, err)
	}
	if res.Allowed > 0 {
		return 0, nil
	}
	if res.RetryAfter <= 0 {
		return time.Millisecond, nil
	}
	return res.RetryAfter, nil
}

// Rate is the limiter's rate.
func (l *Redis) Rate() Rate { return l.r }

// Key is the Redis key that holds the limiter's state.
func (l *Redis) Key() string { return l.key }

// exactKey gives redis_rate the client with the "rate:" it puts before every
// key taken off again, so that the key is the one NewRedis was given, under
// the relay's hash tag like the store's own keys.
type exactKey struct{ goredis.UniversalClient }

const redisRatePrefix = "rate:" // redis_rate's

func trimKeys(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = strings.TrimPrefix(k, redisRatePrefix)
	}
	return out
}

func (c exactKey) Eval(ctx context.Context, script string, keys []string, args ...any) *goredis.Cmd {
	return c.UniversalClient.Eval(ctx, script, trimKeys(keys), args...)
}

func (c exactKey) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *goredis.Cmd {
	return c.UniversalClient.EvalSha(ctx, sha1, trimKeys(keys), args...)
}

func (c exactKey) EvalRO(ctx context.Context, script string, keys []string, args ...any) *goredis.Cmd {
	return c.UniversalClient.EvalRO(ctx, script, trimKeys(keys), args...)
}

func (c exactKey) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *goredis.Cmd {
	return c.UniversalClient.EvalShaRO(ctx, sha1, trimKeys(keys), args...)
}

func (c exactKey) Del(ctx context.Context, keys ...string) *goredis.IntCmd {
	return c.UniversalClient.Del(ctx, trimKeys(keys)...)
}

// Interface guards
var (
	_ Limiter = (*Local)(nil)
	_ Limiter = (*Redis)(nil)
)
