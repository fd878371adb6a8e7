package webhookrelay

// The relay's other modules live in packages of their own: the stores
// (queue/memorystore, queue/bolt, queue/redis), the console and the
// `caddy webhook-relay` command. The handler uses the bolt store and ops
// (the admin API) directly; these imports register the rest, so that every
// build of the relay has them all.
import (
	_ "github.com/hookrelay/caddy-webhook-relay/command"
	_ "github.com/hookrelay/caddy-webhook-relay/console"
	_ "github.com/hookrelay/caddy-webhook-relay/queue/memorystore"
	_ "github.com/hookrelay/caddy-webhook-relay/queue/redis"
)
