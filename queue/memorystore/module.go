// Package memorystore is the Caddy module of the memory store,
// http.webhook_relay.stores.memory. The store itself is queue.Memory; its
// module lives here so that the store contract, package queue, imports no
// Caddy.
package memorystore

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

func init() {
	caddy.RegisterModule(Backend{})
}

// Backend keeps everything in memory: for tests and development only.
// Payloads that were acknowledged but not yet delivered are LOST when the
// process exits.
type Backend struct{}

// CaddyModule returns the Caddy module information.
func (Backend) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.webhook_relay.stores.memory",
		New: func() caddy.Module { return new(Backend) },
	}
}

// StoreIdentity implements queue.Backend.
func (Backend) StoreIdentity(relayName string) string { return "memory:" + relayName }

// OpenStore implements queue.Backend.
func (Backend) OpenStore(_ string, opts queue.Options, _ *zap.Logger) (queue.Store, error) {
	return queue.NewMemory(opts), nil
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens:
//
//	store memory
func (*Backend) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Err("store memory takes no options")
	}
	return nil
}

// Interface guards
var (
	_ queue.Backend         = (*Backend)(nil)
	_ caddyfile.Unmarshaler = (*Backend)(nil)
)
