package bolt

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

func init() {
	caddy.RegisterModule(Backend{})
}

// Backend keeps a relay's dedupe markers, queue and dead letters in a
// bbolt file on local disk: durable with no extra service, for one Caddy
// instance. A payload is committed to the file (fsync) before the relay
// answers 200, so it survives a restart, a crash, kill -9 or a power cut;
// it does not survive the loss of the disk. Only one process can use a file
// at a time: a second Caddy on the same file fails to start, naming it.
type Backend struct {
	// Path is the store file of the relay. Default:
	// "<Caddy's data directory>/webhook_relay/<relay name>.db", e.g.
	// ~/.local/share/caddy/webhook_relay/default.db. A path given here is
	// the file itself, not a directory, so it belongs to one relay: two
	// relays cannot share a file. Placeholders such as {env.STATE_DIRECTORY}
	// are resolved. The directory is created (mode 0700) if missing; an
	// existing file that cannot be read is an error, never recreated.
	Path string `json:"path,omitempty"`

	path string // Path with placeholders resolved, made absolute
}

// CaddyModule returns the Caddy module information.
func (Backend) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.webhook_relay.stores.bolt",
		New: func() caddy.Module { return new(Backend) },
	}
}

// Provision resolves placeholders in Path. It opens nothing: the file is
// opened once per process by OpenStore.
func (b *Backend) Provision(caddy.Context) error {
	if b.Path == "" {
		return nil
	}
	p, err := caddy.NewReplacer().ReplaceOrErr(b.Path, true, true)
	if err != nil {
		return fmt.Errorf("bolt path %q: %v", b.Path, err)
	}
	if p == "" {
		return fmt.Errorf("bolt path %q resolves to empty", b.Path)
	}
	if b.path, err = filepath.Abs(p); err != nil {
		return fmt.Errorf("bolt path %q: %v", b.Path, err)
	}
	return nil
}

// file is the store file of the relay named relayName.
func (b *Backend) file(relayName string) string {
	if b.path != "" {
		return b.path
	}
	return DefaultPath(relayName)
}

// DefaultPath is where the bolt store of the relay named relayName
// lives when no path is configured: under Caddy's data directory.
func DefaultPath(relayName string) string {
	return filepath.Join(caddy.AppDataDir(), "webhook_relay", relayName+".db")
}

// StoreIdentity implements queue.Backend: the store is its file.
func (b *Backend) StoreIdentity(relayName string) string { return "bolt:" + b.file(relayName) }

// OpenStore implements queue.Backend.
func (b *Backend) OpenStore(relayName string, opts queue.Options, logger *zap.Logger) (queue.Store, error) {
	path := b.file(relayName)
	release, err := claimBoltFile(path, relayName)
	if err != nil {
		return nil, err
	}
	s, err := open(path, opts, logger.With(zap.String("relay", relayName), zap.String("path", path)), testHooks{})
	if err != nil {
		release()
		return nil, err
	}
	st, err := s.Stats(context.Background())
	if err == nil {
		logger.Info("opened bolt store", zap.String("relay", relayName), zap.String("path", path),
			zap.Int("backlog", st.Backlog), zap.Int("dead", st.Dead))
	}
	s.release = release
	return s, nil
}

// boltFiles tells which relay of this process holds each bolt file, so that
// two relays given the same path get an error that says so instead of
// waiting for the file lock.
var (
	boltFilesMu sync.Mutex
	boltFiles   = make(map[string]string)
)

func claimBoltFile(path, relayName string) (release func(), err error) {
	boltFilesMu.Lock()
	defer boltFilesMu.Unlock()
	if other, ok := boltFiles[path]; ok {
		return nil, fmt.Errorf("bolt store %s is already used by relay %q: each relay needs a file of its own", path, other)
	}
	boltFiles[path] = relayName
	var once sync.Once
	return func() {
		once.Do(func() {
			boltFilesMu.Lock()
			defer boltFilesMu.Unlock()
			delete(boltFiles, path)
		})
	}, nil
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens:
//
//	store bolt [<path>]
func (b *Backend) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	if d.NextArg() {
		b.Path = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Err("store bolt takes no options: store bolt [<path>]")
	}
	return nil
}

// Interface guards
var (
	_ queue.Backend         = (*Backend)(nil)
	_ caddy.Provisioner     = (*Backend)(nil)
	_ caddyfile.Unmarshaler = (*Backend)(nil)
)
