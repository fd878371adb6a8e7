package webhookrelay

// The store modules live in packages of their own (queue, queue/bolt,
// queue/redis). The handler uses the memory and bolt ones by name; this
// import registers the redis one, so that every build of the relay has all
// three.
import _ "github.com/hookrelay/caddy-webhook-relay/queue/redis"
