// Package guard keeps a panic in one of the relay's background goroutines
// from taking down Caddy and every site it serves, as Caddy's own health
// checkers do: the panic is logged once with its stack, and the caller
// decides whether to run the work again or stop cleanly.
package guard

import (
	"fmt"
	"runtime/debug"

	"go.uber.org/zap"
)

// Run calls fn and reports whether it panicked. A panic is logged at error
// level, naming what was running (also in the field "running"), with the
// panic value and its stack.
func Run(logger *zap.Logger, what string, fn func()) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			panicked = true
			logPanic(logger, what, v)
		}
	}()
	fn()
	return false
}

// Recover, deferred at the top of a goroutine, ends the goroutine quietly
// after logging a panic the way Run does. Use it where a panic loses
// nothing that the caller must clean up.
func Recover(logger *zap.Logger, what string) {
	if v := recover(); v != nil {
		logPanic(logger, what, v)
	}
}

func logPanic(logger *zap.Logger, what string, v any) {
	if logger == nil {
		logger = zap.NewNop()
	}
	logger.Error("panic in "+what+"; recovered, Caddy keeps running",
		zap.String("running", what), zap.String("panic", fmt.Sprint(v)), zap.ByteString("stack", debug.Stack()))
}
