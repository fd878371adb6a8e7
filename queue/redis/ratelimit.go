package redis

import "github.com/hookrelay/caddy-webhook-relay/ratelimit"

// Limiter returns the rate limiter of one of the relay's destinations,
// shared by every instance on this Redis: its state is the key
// {p}:rate:<destination>, under the relay's hash tag like the store's own
// keys, so it lives on the relay's slot of a Cluster.
func (r *Store) Limiter(destination string, rate ratelimit.Rate) ratelimit.Limiter {
	return ratelimit.NewRedis(r.client, r.ratePrefix+destination, rate)
}
