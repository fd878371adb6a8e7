package queue

import "go.uber.org/zap"

// Backend is a Caddy module in the http.webhook_relay.stores namespace: it
// says where a relay keeps its dedupe markers, queue and dead letters, and
// opens that store. Its Caddyfile form is `store <name> ...`. The modules
// live beside their stores (queue/bolt, queue/redis) or, for the memory
// store, in queue/memorystore, so that this package imports no Caddy.
type Backend interface {
	// StoreIdentity names the storage a relay of this name uses, e.g.
	// "bolt:/var/lib/caddy/webhook_relay/default.db". A relay keeps its
	// open store and delivery workers across config reloads as long as its
	// name and store identity stay the same. It must not contain secrets.
	StoreIdentity(relayName string) string
	// OpenStore opens the store for one relay. It is called once per
	// process for each identity, not once per config load.
	OpenStore(relayName string, opts Options, logger *zap.Logger) (Store, error)
}
