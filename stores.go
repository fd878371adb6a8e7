package webhookrelay

// The store modules live in packages of their own (queue/memorystore,
// queue/bolt, queue/redis). The handler uses the bolt one by name; these
// imports register the others, so that every build of the relay has all
// three.
import (
	_ "github.com/hookrelay/caddy-webhook-relay/queue/memorystore"
	_ "github.com/hookrelay/caddy-webhook-relay/queue/redis"
)
