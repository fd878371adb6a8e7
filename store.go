package webhookrelay

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/dedupe"
)

// StoreModule is a module in the webhook_relay.stores namespace: it says
// where a relay keeps its dedupe markers, queue and dead letters, and opens
// that store.
type StoreModule interface {
	// StoreIdentity names the storage a relay of this name uses, e.g.
	// "bolt:/var/lib/caddy/webhook_relay/default.db". A relay keeps its
	// open store and delivery workers across config reloads as long as its
	// name and store identity stay the same. It must not contain secrets.
	StoreIdentity(relayName string) string
	// OpenStore opens the store for one relay. It is called once per
	// process for each identity, not once per config load.
	OpenStore(relayName string, opts dedupe.Options, logger *zap.Logger) (dedupe.Store, error)
}

func init() {
	caddy.RegisterModule(MemoryStore{})
}

// MemoryStore keeps everything in memory: for tests and development only.
// Payloads that were acknowledged but not yet delivered are LOST when the
// process exits.
type MemoryStore struct{}

// CaddyModule returns the Caddy module information.
func (MemoryStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "webhook_relay.stores.memory",
		New: func() caddy.Module { return new(MemoryStore) },
	}
}

// StoreIdentity implements StoreModule.
func (MemoryStore) StoreIdentity(relayName string) string { return "memory:" + relayName }

// OpenStore implements StoreModule.
func (MemoryStore) OpenStore(_ string, opts dedupe.Options, _ *zap.Logger) (dedupe.Store, error) {
	return dedupe.NewMemory(opts), nil
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens:
//
//	store memory
func (*MemoryStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
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
	_ StoreModule           = (*MemoryStore)(nil)
	_ caddyfile.Unmarshaler = (*MemoryStore)(nil)
)
