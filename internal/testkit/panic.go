package testkit

import (
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Panic is a recovered panic a log should hold, as internal/guard logs it:
// at error level, with what was running in the field "running", the panic
// value in "panic" and the stack in "stack".
type Panic struct {
	Running string
	Value   string
}

// PanicLogged checks that the log entries with a stack are exactly the
// panics want, each logged once, at error level, with its value and a
// stack that passes through the file stackThrough (e.g. "panic_test.go",
// where the test injected the panic). It reads the entries' fields, not
// the wording of their messages.
func PanicLogged(t testing.TB, logs *observer.ObservedLogs, stackThrough string, want ...Panic) {
	t.Helper()
	stacks := logs.FilterFieldKey("stack").All()
	if len(stacks) != len(want) {
		t.Fatalf("%d log entries with a stack, want %d (%v): %v", len(stacks), len(want), want, stacks)
	}
	left := append([]Panic(nil), want...)
	for _, e := range stacks {
		f := e.ContextMap()
		got := Panic{Running: str(f["running"]), Value: str(f["panic"])}
		i := slices.Index(left, got)
		switch {
		case i < 0:
			t.Errorf("logged a panic in %q with value %q, want one of %v", got.Running, got.Value, left)
			continue
		case e.Level != zapcore.ErrorLevel:
			t.Errorf("panic in %s logged at level %s, want error", got.Running, e.Level)
		case !strings.Contains(str(f["stack"]), stackThrough):
			t.Errorf("panic in %s logged without a stack through %s:\n%s", got.Running, stackThrough, f["stack"])
		}
		left = slices.Delete(left, i, i+1)
	}
}

// str is a field's value as a string: observer gives a ByteString field
// as a string already.
func str(v any) string {
	s, _ := v.(string)
	return s
}
