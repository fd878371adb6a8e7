package queue

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

// Backend is a Caddy module in the http.webhook_relay.stores namespace: it
// says where a relay keeps its dedupe markers, queue and dead letters, and
// opens that store. Its Caddyfile form is `store <name> ...`.
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

func init() {
	caddy.RegisterModule(MemoryBackend{})
}

// MemoryBackend keeps everything in memory: for tests and development only.
// Payloads that were acknowledged but not yet delivered are LOST when the
// process exits.
type MemoryBackend struct{}

// CaddyModule returns the Caddy module information.
func (MemoryBackend) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.webhook_relay.stores.memory",
		New: func() caddy.Module { return new(MemoryBackend) },
	}
}

// StoreIdentity implements Backend.
func (MemoryBackend) StoreIdentity(relayName string) string { return "memory:" + relayName }

// OpenStore implements Backend.
func (MemoryBackend) OpenStore(_ string, opts Options, _ *zap.Logger) (Store, error) {
	return NewMemory(opts), nil
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens:
//
//	store memory
func (*MemoryBackend) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
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
	_ Backend               = (*MemoryBackend)(nil)
	_ caddyfile.Unmarshaler = (*MemoryBackend)(nil)
)
