// Command caddy is Caddy with its standard modules and webhook_relay, for
// the quick start, the tests and CI. Users elsewhere can build the same with
// xcaddy (see the README).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/hookrelay/caddy-webhook-relay"
)

func main() {
	caddycmd.Main()
}
