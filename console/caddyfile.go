package console

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("webhook_relay_console", parseConsoleCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("webhook_relay_console", httpcaddyfile.Before, "respond")
}

func parseConsoleCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	c := new(Console)
	err := c.UnmarshalCaddyfile(h.Dispenser)
	return c, err
}

// UnmarshalCaddyfile sets up the console from Caddyfile tokens. Syntax:
//
//	webhook_relay_console [<matcher>] [{
//		allow_anonymous
//	}]
func (c *Console) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "allow_anonymous":
			if d.NextArg() {
				return d.ArgErr()
			}
			c.AllowAnonymous = true
		default:
			return d.Errf("webhook_relay_console: unrecognized subdirective '%s' (the only one is allow_anonymous)", d.Val())
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Console)(nil)
