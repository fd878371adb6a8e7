package memorystore_test

import (
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/hookrelay/caddy-webhook-relay/queue/memorystore"
)

func TestModuleRegistered(t *testing.T) {
	if _, err := caddy.GetModule("http.webhook_relay.stores.memory"); err != nil {
		t.Fatal(err)
	}
}

func TestCaddyfile(t *testing.T) {
	for input, ok := range map[string]bool{
		"memory":           true,
		"memory extra":     false,
		"memory {\n\tx\n}": false,
	} {
		var b memorystore.Backend
		err := b.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if (err == nil) != ok {
			t.Errorf("%q: error %v, want ok %v", input, err, ok)
		}
	}
}
