// Package caddyfilearg reads the arguments of Caddyfile subdirectives the
// same way for the handler and for every store, so that each error names
// the subdirective, quotes what was given and shows what would do.
//
// Each function is called with the dispenser on the subdirective's name.
package caddyfilearg

import (
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// String reads the subdirective's only argument.
func String(d *caddyfile.Dispenser) (string, error) {
	var s string
	if !d.AllArgs(&s) {
		return "", d.ArgErr()
	}
	return s, nil
}

// Duration reads the subdirective's only argument as a positive duration.
func Duration(d *caddyfile.Dispenser) (time.Duration, error) {
	sub := d.Val()
	dur, err := NextDuration(d, sub)
	if err == nil && d.NextArg() {
		return 0, d.ArgErr()
	}
	return dur, err
}

// NextDuration reads the next argument of the subdirective sub as a
// positive duration, for subdirectives that take several.
func NextDuration(d *caddyfile.Dispenser, sub string) (time.Duration, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s: bad duration '%s', want a positive duration such as 30s, 5m or 24h", sub, d.Val())
	}
	return dur, nil
}

// Size reads the subdirective's only argument as a positive size in bytes,
// such as 32MiB; example is one that suits the subdirective.
func Size(d *caddyfile.Dispenser, example string) (int64, error) {
	sub := d.Val()
	s, err := String(d)
	if err != nil {
		return 0, err
	}
	if size, err := humanize.ParseBytes(s); err == nil && size > 0 && size <= 1<<62 {
		return int64(size), nil
	}
	return 0, d.Errf("%s: bad size '%s', want e.g. %s", sub, s, example)
}

// Int reads the subdirective's only argument as a whole number of at least
// least.
func Int(d *caddyfile.Dispenser, least int) (int, error) {
	sub := d.Val()
	s, err := String(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	switch {
	case (err != nil || n < least) && least == 1:
		return 0, d.Errf("%s: want a positive whole number, got '%s'", sub, s)
	case err != nil || n < least:
		return 0, d.Errf("%s: want a whole number >= %d, got '%s'", sub, least, s)
	}
	return n, nil
}
