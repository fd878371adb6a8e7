package delivery

import (
	"time"

	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/guard"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// The engine's events, as Caddy's events app names them (the root package
// emits them through it).
const (
	// EventDelivered: the upstream took a payload (a 2xx answer).
	EventDelivered = "webhook_relay.delivered"
	// EventDeadLetter: a payload was moved to the dead letters.
	EventDeadLetter = "webhook_relay.dead_letter"
	// EventUpstreamDown: the upstream was taken for down (see
	// unreachableAfter); one payload at a time probes it.
	EventUpstreamDown = "webhook_relay.upstream_down"
	// EventUpstreamUp: the first answer after EventUpstreamDown.
	EventUpstreamUp = "webhook_relay.upstream_up"
)

// Events is told what happens to payloads and to the upstream. Emit runs
// in the engine's goroutines and may be called from several at once.
type Events interface {
	// Wants tells whether anyone would see an event named name: its data
	// is made only then, so an engine nobody listens to pays one call.
	Wants(name string) bool
	// Emit hands an event over; data is not touched after.
	Emit(name string, data map[string]any)
}

// wants tells whether the event named name is to be emitted.
func (e *Engine) wants(name string) bool {
	return e.cfg.Events != nil && e.cfg.Events.Wants(name)
}

// emit hands an event to Config.Events. A panic in it is logged and
// changes nothing for the entry.
func (e *Engine) emit(log *zap.Logger, name string, data map[string]any) {
	guard.Run(log, "the events handler of "+name, func() { e.cfg.Events.Emit(name, data) })
}

// destinationName is the destination s delivers to, as events name it.
func destinationName(s *Settings) string {
	if s.Destination == "" {
		return DefaultDestination
	}
	return s.Destination
}

// emitEntry emits name (EventDelivered or EventDeadLetter) for ent,
// delivered with s, if anyone listens.
func (e *Engine) emitEntry(log *zap.Logger, name string, s *Settings, ent *queue.Entry) {
	if !e.wants(name) {
		return
	}
	data := map[string]any{
		"relay":       e.cfg.Relay,
		"destination": destinationName(s),
		"id":          ent.ID,
		"key":         ent.Key,
		"attempts":    ent.Attempts,
		"status":      ent.LastStatus,
	}
	if name == EventDeadLetter {
		data["error"] = ent.LastError
	}
	e.emit(log, name, data)
}

// outageEvent is an EventUpstreamDown or EventUpstreamUp to emit.
type outageEvent struct {
	name string
	s    *Settings
	f    freedPlace // the turn that made the change
	// downFor is how long the upstream was down (EventUpstreamUp).
	downFor time.Duration
	// unanswered is the attempts in a row it did not answer
	// (EventUpstreamDown).
	unanswered int
}

// emitOutage emits ev, if anyone listens, in a goroutine of its own once
// the one before it is over: the loop never waits for a handler, and
// upstream_down and upstream_up are seen in the order they happened.
func (l *loop) emitOutage(ev outageEvent) {
	if !l.e.wants(ev.name) {
		return
	}
	data := map[string]any{
		"relay":       l.e.cfg.Relay,
		"destination": destinationName(ev.s),
		"upstream":    ev.s.Upstream.Host,
		"id":          ev.f.h.entry.ID,
		"key":         ev.f.h.entry.Key,
	}
	if ev.name == EventUpstreamDown {
		data["attempts"] = ev.unanswered
		data["error"] = ev.f.reason
	} else {
		data["status"] = ev.f.status
		data["down_ms"] = ev.downFor.Milliseconds()
	}
	before, done := l.emitted, make(chan struct{})
	l.emitted = done
	log := l.e.logger(ev.s)
	go func() {
		defer close(done)
		if before != nil {
			<-before
		}
		l.e.emit(log, ev.name, data)
	}()
}
