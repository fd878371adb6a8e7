package webhookrelay

import (
	"net/http"
	"strings"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/verify"

	"github.com/hookrelay/caddy-webhook-relay/internal/caddyfilearg"
	"github.com/hookrelay/caddy-webhook-relay/ratelimit"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("webhook_relay", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("webhook_relay", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	r := new(Handler)
	err := r.UnmarshalCaddyfile(h.Dispenser)
	return r, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	webhook_relay [<matcher>] [<upstream>] {
//		upstream      <url>
//		name          <name>
//		auth_query    <param> <secret...>
//		auth_header   <field> <value...>
//		auth_basic    <user> <password...>
//		verify        <scheme> <secret...> [{ tolerance <duration> }]
//		verify        fal [{ tolerance <duration>; jwks <url> }]
//		verify        meta <secret...> { verify_token <token> }
//		verify        twilio <secret...> { base_url <scheme://host[:port]> }
//		verify        hmac { header <field>; algorithm <alg>; encoding <enc>; prefix <text>; secret <secret...> }
//		challenge     graph | dropbox
//		key           <source...>
//		window        <duration>
//		store         memory | bolt [<path>] | redis <url> [{ ... }]
//		max_body      <size>
//		max_backlog   <n>
//		timeout       <duration>
//		concurrency   <n>
//		backoff       <initial> <max>
//		give_up_after <duration>
//		header_up     <field> <value>
//		forward_headers <field...>
//		sign_upstream <whsec_secret>
//		max_memory    <size>
//		body_timeout  <duration>
//		max_dead      <n>
//		dead_retention <duration>
//		max_stored    <size>
//		history       <duration> | off
//		destination   <name> <url> [{
//			filter        <CEL expression>
//			rate          <n>/s | <n>/m
//			concurrency   <n>
//			timeout       <duration>
//			backoff       <initial> <max>
//			give_up_after <duration>
//			header_up     <field> <value>
//			sign_upstream <whsec_secret>
//		}]
//	}
//
// auth_query, auth_header, auth_basic, header_up and destination may be
// repeated (once per parameter, field, user or destination name); every
// other subdirective may appear once. upstream (or the inline URL) is
// shorthand for destination upstream <url>.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		h.Upstream = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}

	seen := make(map[string]bool)
	for d.NextBlock(0) {
		sub := d.Val()
		if seen[sub] && sub != "auth_query" && sub != "auth_header" && sub != "auth_basic" && sub != "header_up" && sub != "destination" {
			return d.Errf("subdirective '%s' given twice", sub)
		}
		seen[sub] = true

		switch sub {
		case "upstream":
			if h.Upstream != "" {
				return d.Err("upstream given twice (inline and in the block)")
			}
			if !d.AllArgs(&h.Upstream) {
				return d.ArgErr()
			}

		case "name":
			if !d.AllArgs(&h.Name) {
				return d.ArgErr()
			}

		case "auth_query":
			if !d.NextArg() {
				return d.ArgErr()
			}
			param := d.Val()
			secrets := d.RemainingArgs()
			if len(secrets) == 0 {
				return d.Errf("auth_query %s: give at least one secret, e.g. {env.WEBHOOK_TOKEN}", param)
			}
			if _, dup := h.AuthQuery[param]; dup {
				return d.Errf("auth_query %s given twice; list all its secrets on one line", param)
			}
			if h.AuthQuery == nil {
				h.AuthQuery = make(map[string][]string)
			}
			h.AuthQuery[param] = secrets

		case "auth_header", "auth_basic":
			what, example := "value", `"Bearer {env.WEBHOOK_TOKEN}"`
			m := &h.AuthHeader
			if sub == "auth_basic" {
				what, example, m = "password", "{env.WEBHOOK_PASSWORD}", &h.AuthBasic
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			values := d.RemainingArgs()
			if len(values) == 0 {
				return d.Errf("%s %s: give at least one %s, e.g. %s", sub, name, what, example)
			}
			if _, dup := (*m)[name]; dup {
				return d.Errf("%s %s given twice; list all its %ss on one line", sub, name, what)
			}
			if *m == nil {
				*m = make(map[string][]string)
			}
			(*m)[name] = values

		case "verify":
			cfg, err := parseVerify(d)
			if err != nil {
				return err
			}
			h.Verify = cfg

		case "challenge":
			var err error
			if h.Challenge, err = caddyfilearg.String(d); err != nil {
				return err
			}
			if err := checkChallenge(h.Challenge); err != nil {
				return d.Err(err.Error())
			}

		case "key":
			h.Key = d.RemainingArgs()
			if len(h.Key) == 0 {
				return d.ArgErr()
			}

		case "window":
			dur, err := caddyfilearg.Duration(d)
			if err != nil {
				return err
			}
			h.Window = caddy.Duration(dur)

		case "store":
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			modID := "http.webhook_relay.stores." + name
			if _, err := caddy.GetModule(modID); err != nil {
				return d.Errf("unknown store '%s': use memory, bolt or redis", name)
			}
			unm, err := caddyfile.UnmarshalModule(d, modID)
			if err != nil {
				return err
			}
			h.StoreRaw = caddyconfig.JSONModuleObject(unm, "type", name, nil)

		case "max_body":
			size, err := caddyfilearg.Size(d, "32MiB")
			if err != nil {
				return err
			}
			h.MaxBody = size

		case "max_memory":
			size, err := caddyfilearg.Size(d, "256MiB")
			if err != nil {
				return err
			}
			h.MaxMemory = size

		case "body_timeout":
			dur, err := caddyfilearg.Duration(d)
			if err != nil {
				return err
			}
			h.BodyTimeout = caddy.Duration(dur)

		case "max_stored":
			size, err := caddyfilearg.Size(d, "2GiB")
			if err != nil {
				return err
			}
			h.MaxStored = size

		case "history":
			if args := d.RemainingArgs(); len(args) == 1 && args[0] == "off" {
				h.HistoryOff = true
				break
			} else if len(args) > 0 {
				for range args {
					d.Prev()
				}
			}
			dur, err := caddyfilearg.Duration(d)
			if err != nil {
				return err
			}
			h.History = caddy.Duration(dur)

		case "max_dead":
			n, err := caddyfilearg.Int(d, 1)
			if err != nil {
				return err
			}
			h.MaxDead = n

		case "dead_retention":
			dur, err := caddyfilearg.Duration(d)
			if err != nil {
				return err
			}
			h.DeadRetention = caddy.Duration(dur)

		case "max_backlog":
			n, err := caddyfilearg.Int(d, 1)
			if err != nil {
				return err
			}
			h.MaxBacklog = n

		case "timeout":
			dur, err := caddyfilearg.Duration(d)
			if err != nil {
				return err
			}
			h.Timeout = caddy.Duration(dur)

		case "concurrency":
			n, err := caddyfilearg.Int(d, 1)
			if err != nil {
				return err
			}
			h.Concurrency = n

		case "backoff":
			initial, err := caddyfilearg.NextDuration(d, sub)
			if err != nil {
				return err
			}
			maximum, err := caddyfilearg.NextDuration(d, sub)
			if err != nil {
				return err
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			h.BackoffInitial, h.BackoffMax = caddy.Duration(initial), caddy.Duration(maximum)

		case "give_up_after":
			dur, err := caddyfilearg.Duration(d)
			if err != nil {
				return err
			}
			h.GiveUpAfter = caddy.Duration(dur)

		case "forward_headers":
			if h.ForwardHeaders = d.RemainingArgs(); len(h.ForwardHeaders) == 0 {
				return d.ArgErr()
			}

		case "sign_upstream":
			var err error
			if h.SignUpstream, err = caddyfilearg.String(d); err != nil {
				return err
			}

		case "header_up":
			var field, value string
			if !d.AllArgs(&field, &value) {
				return d.ArgErr()
			}
			if h.HeaderUp == nil {
				h.HeaderUp = make(http.Header)
			}
			h.HeaderUp.Add(field, value)

		case "destination":
			dest, err := parseDestination(d)
			if err != nil {
				return err
			}
			for _, other := range h.Destinations {
				if other.Name == dest.Name {
					return d.Errf("destination %s given twice: destination names are unique within a relay", dest.Name)
				}
			}
			h.Destinations = append(h.Destinations, dest)

		default:
			return d.Errf("unrecognized webhook_relay subdirective '%s'", sub)
		}
	}
	return nil
}

// parseDestination reads `destination <name> <url> [{ filter, rate,
// concurrency, timeout, backoff, give_up_after, header_up, sign_upstream }]`.
// The filter is one token: a CEL expression holds spaces and quotes, so it
// is written in backticks.
func parseDestination(d *caddyfile.Dispenser) (Destination, error) {
	var dest Destination
	if !d.AllArgs(&dest.Name, &dest.URL) {
		return dest, d.Err("destination: give a name and a URL: destination <name> <url> [{ ... }]")
	}
	if !validName.MatchString(dest.Name) {
		return dest, d.Errf("destination %q: name: use 1 to 64 letters, digits, '.', '_' or '-'", dest.Name)
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] && opt != "header_up" {
			return dest, d.Errf("destination %s: %s given twice", dest.Name, opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "filter":
			args := d.RemainingArgs()
			if len(args) != 1 {
				return dest, d.Errf("destination %s: filter: give the expression as one token, in backticks: "+
					"filter `body.taskType == \"imageInference\"`", dest.Name)
			}
			dest.Filter = args[0]
		case "rate":
			if dest.Rate, err = caddyfilearg.String(d); err == nil {
				if _, perr := ratelimit.Parse(dest.Rate); perr != nil {
					return dest, d.Errf("destination %s: %v", dest.Name, perr)
				}
			}
		case "concurrency":
			dest.Concurrency, err = caddyfilearg.Int(d, 1)
		case "timeout":
			var dur time.Duration
			dur, err = caddyfilearg.Duration(d)
			dest.Timeout = caddy.Duration(dur)
		case "give_up_after":
			var dur time.Duration
			dur, err = caddyfilearg.Duration(d)
			dest.GiveUpAfter = caddy.Duration(dur)
		case "backoff":
			var initial, maximum time.Duration
			if initial, err = caddyfilearg.NextDuration(d, opt); err != nil {
				return dest, err
			}
			if maximum, err = caddyfilearg.NextDuration(d, opt); err != nil {
				return dest, err
			}
			if d.NextArg() {
				return dest, d.ArgErr()
			}
			dest.BackoffInitial, dest.BackoffMax = caddy.Duration(initial), caddy.Duration(maximum)
		case "header_up":
			var field, value string
			if !d.AllArgs(&field, &value) {
				return dest, d.ArgErr()
			}
			if dest.HeaderUp == nil {
				dest.HeaderUp = make(http.Header)
			}
			dest.HeaderUp.Add(field, value)
		case "sign_upstream":
			dest.SignUpstream, err = caddyfilearg.String(d)
		default:
			return dest, d.Errf("destination %s: unrecognized option '%s': use filter, rate, concurrency, timeout, "+
				"backoff, give_up_after, header_up or sign_upstream", dest.Name, opt)
		}
		if err != nil {
			return dest, err
		}
	}
	return dest, nil
}

// parseVerify reads `verify <scheme> <secret...> [{ tolerance <d> }]` (with
// verify_token for meta, base_url for twilio), `verify fal [{ tolerance <d>;
// jwks <url> }]`, or
// `verify hmac { header, algorithm, encoding, prefix, secret }`.
func parseVerify(d *caddyfile.Dispenser) (*verify.Config, error) {
	if !d.NextArg() {
		return nil, d.Errf("verify: name a scheme: %s", strings.Join(verify.SchemeNames(), ", "))
	}
	cfg := &verify.Config{Scheme: d.Val(), Secrets: d.RemainingArgs()}
	hmac := cfg.Scheme == "hmac"
	if hmac && len(cfg.Secrets) > 0 {
		return nil, d.Err("verify hmac: give the secrets in its block: secret <secret...>")
	}
	if !hmac && len(cfg.Secrets) == 0 && verify.TakesSecrets(cfg.Scheme) {
		return nil, d.Errf("verify %s: give at least one secret, e.g. {env.WEBHOOK_SECRET}", cfg.Scheme)
	}
	if len(cfg.Secrets) > 0 && !verify.TakesSecrets(cfg.Scheme) {
		return nil, d.Errf("verify %s: takes no secret: it checks with the keys the sender publishes", cfg.Scheme)
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("verify: %s given twice", opt)
		}
		seen[opt] = true
		var err error
		switch {
		case opt == "tolerance" && !hmac:
			var dur time.Duration
			dur, err = caddyfilearg.Duration(d)
			cfg.Tolerance = caddy.Duration(dur)
		case opt == "header" && hmac:
			cfg.Header, err = caddyfilearg.String(d)
		case opt == "algorithm" && hmac:
			cfg.Algorithm, err = caddyfilearg.String(d)
		case opt == "encoding" && hmac:
			cfg.Encoding, err = caddyfilearg.String(d)
		case opt == "prefix" && hmac:
			cfg.Prefix, err = caddyfilearg.String(d)
		case opt == "jwks" && cfg.Scheme == "fal":
			cfg.JWKS, err = caddyfilearg.String(d)
		case opt == "jwks":
			return nil, d.Errf("verify %s: jwks is for verify fal only", cfg.Scheme)
		case opt == "verify_token" && cfg.Scheme == "meta":
			cfg.VerifyToken, err = caddyfilearg.String(d)
		case opt == "base_url" && cfg.Scheme == "twilio":
			cfg.BaseURL, err = caddyfilearg.String(d)
		case opt == "verify_token" || opt == "base_url":
			return nil, d.Errf("verify %s: %s is for verify %s only", cfg.Scheme, opt, map[string]string{"verify_token": "meta", "base_url": "twilio"}[opt])
		case opt == "secret" && hmac:
			if cfg.Secrets = d.RemainingArgs(); len(cfg.Secrets) == 0 {
				return nil, d.ArgErr()
			}
		case hmac:
			return nil, d.Errf("verify hmac: unrecognized option '%s': use header, algorithm, encoding, prefix or secret", opt)
		default:
			return nil, d.Errf("verify %s: unrecognized option '%s': use %s", cfg.Scheme, opt, verifyOptions(cfg.Scheme))
		}
		if err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// verifyOptions names the block options of a verify scheme other than hmac.
func verifyOptions(scheme string) string {
	switch scheme {
	case "meta":
		return "verify_token"
	case "twilio":
		return "base_url"
	case "fal":
		return "tolerance or jwks"
	}
	return "tolerance"
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
