// Package testkit is the one test support package of the relay's tests:
// waiting for a condition (Eventually, Poll), a recording upstream on
// 127.0.0.1 (NewUpstream), checking that a recovered panic was logged
// (PanicLogged), a client for the relay (Send, Post, ExpectStatus) and the
// console tests' fixtures (ConsoleSecrets, PNG, RunwareResult). Only tests
// import it.
package testkit

import (
	"os"
	"testing"
	"time"
)

// Eventually polls cond until it holds, and fails the test once timeout has
// passed with "after <timeout>: " and the message. The message is formatted
// only then, so an argument that is a fmt.Stringer (see Lazy) shows the
// state at the deadline rather than at the start. Polls start at a
// millisecond apart and slow down to 20ms, so a condition that holds soon
// is seen soon and an expensive one is not run in a tight loop.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("after %s: "+format, append([]any{timeout}, args...)...)
	}
}

// Poll polls cond as Eventually does and reports whether it held before
// timeout passed, without failing: for a test that checks the outcome
// itself (e.g. with t.Errorf, to go on), and for goroutines other than
// the test's.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
	return true
}

// Lazy is a message built when it is printed: an argument of Eventually
// that describes the state at the deadline.
type Lazy func() string

func (f Lazy) String() string { return f() }

// Unavailable ends a test that cannot run here (a platform without what it
// measures): a skip on a developer's machine, a failure under CI (the
// environment variable CI set), where every test must run.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("cannot run under CI: "+format, args...)
	}
	t.Skipf(format, args...)
}
