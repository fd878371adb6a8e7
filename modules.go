package webhookrelay

// The console, the commands and the admin API live in packages of their
// own (console, command, ops); importing them registers their modules and
// the caddy webhook-relay command, so that every build of the relay has
// them all. The pool imports ops itself.
import (
	_ "github.com/hookrelay/caddy-webhook-relay/command"
	_ "github.com/hookrelay/caddy-webhook-relay/console"
)
