// Package faultlog logs a recurring fault once when it starts and once when
// it clears, instead of once per failed call.
package faultlog

import (
	"sync/atomic"

	"go.uber.org/zap"
)

// Tracker remembers whether a fault is ongoing. Ok is called on every
// success, so it is one atomic load when nothing was wrong.
type Tracker struct {
	failing atomic.Bool
}

// Fail logs msg with err at error level unless the fault is already ongoing.
func (t *Tracker) Fail(logger *zap.Logger, msg string, err error, fields ...zap.Field) {
	if t.failing.CompareAndSwap(false, true) {
		logger.Error(msg, append(fields, zap.Error(err))...)
	}
}

// Ok logs msg at info level if a fault was ongoing, and clears it.
func (t *Tracker) Ok(logger *zap.Logger, msg string) {
	if t.failing.Load() && t.failing.CompareAndSwap(true, false) {
		logger.Info(msg)
	}
}
