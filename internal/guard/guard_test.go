package guard

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// observed is a logger whose entries the test reads back.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(core), logs
}

func TestRunLogsPanicWithStack(t *testing.T) {
	log, logs := observed()
	if !Run(log, "the test loop", func() { panic("boom") }) {
		t.Fatal("Run said fn did not panic")
	}
	if logs.Len() != 1 {
		t.Fatalf("logged %d entries, want 1", logs.Len())
	}
	e := logs.All()[0]
	f := e.ContextMap()
	if !strings.Contains(e.Message, "the test loop") || f["panic"] != "boom" || !strings.Contains(f["stack"].(string), "guard_test.go") {
		t.Errorf("logged %q %v; want the loop's name, the panic value and a stack through the test", e.Message, f)
	}
}

func TestRunWithoutPanic(t *testing.T) {
	log, logs := observed()
	ran := false
	if Run(log, "x", func() { ran = true }) || !ran || logs.Len() != 0 {
		t.Errorf("Run of a quiet fn: ran=%v, logged %d", ran, logs.Len())
	}
}

func TestRecoverEndsGoroutine(t *testing.T) {
	log, logs := observed()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer Recover(log, "a worker")
		panic(42)
	}()
	<-done
	if logs.Len() != 1 || logs.All()[0].ContextMap()["panic"] != "42" {
		t.Errorf("logs = %v, want one entry with panic 42", logs.All())
	}
}
