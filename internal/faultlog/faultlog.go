// Package faultlog logs a recurring fault once when it starts and once when
// it clears, instead of once per failed call.
package faultlog

import (
	"sync"

	"go.uber.org/zap"
)

// Tracker remembers whether a fault is ongoing.
type Tracker struct {
	mu      sync.Mutex
	failing bool
}

// Fail logs msg with err at error level unless the fault is already ongoing.
func (t *Tracker) Fail(logger *zap.Logger, msg string, err error, fields ...zap.Field) {
	t.mu.Lock()
	first := !t.failing
	t.failing = true
	t.mu.Unlock()
	if first {
		logger.Error(msg, append(fields, zap.Error(err))...)
	}
}

// Ok logs msg at info level if a fault was ongoing, and clears it.
func (t *Tracker) Ok(logger *zap.Logger, msg string) {
	t.mu.Lock()
	was := t.failing
	t.failing = false
	t.mu.Unlock()
	if was {
		logger.Info(msg)
	}
}
