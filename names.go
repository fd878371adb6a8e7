package webhookrelay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

// namesInUse tracks the relay names of each config being loaded, keyed by
// the config's context, so that two different relays cannot share a name.
var (
	namesMu    sync.Mutex
	namesInUse = make(map[context.Context]map[string]namedRelay)
)

// namedRelay is the handler that took a name, and its settings as JSON at
// that moment (loading the store module clears StoreRaw afterwards).
type namedRelay struct {
	h        *Handler
	settings []byte
}

// claimName registers h's name in its config. The same relay listed twice
// (one site block serving several addresses becomes one handler per server)
// has identical settings and may share the name; a different relay may not.
func claimName(ctx caddy.Context, h *Handler) error {
	namesMu.Lock()
	defer namesMu.Unlock()
	names := namesInUse[ctx.Context]
	if names == nil {
		names = make(map[string]namedRelay)
		namesInUse[ctx.Context] = names
	}
	settings, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if other, ok := names[h.Name]; ok && !bytes.Equal(other.settings, settings) {
		return fmt.Errorf("two webhook_relay handlers with different settings are both named %q "+
			"(an unnamed one is named %q): give each its own name", h.Name, DefaultName)
	} else if !ok {
		names[h.Name] = namedRelay{h: h, settings: settings}
	}
	return nil
}

func releaseName(ctx caddy.Context, h *Handler) {
	namesMu.Lock()
	defer namesMu.Unlock()
	names := namesInUse[ctx.Context]
	if names[h.Name].h == h {
		delete(names, h.Name)
	}
	if len(names) == 0 {
		delete(namesInUse, ctx.Context)
	}
}
