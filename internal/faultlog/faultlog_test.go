package faultlog

import (
	"errors"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestLogsOncePerOutage(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	var tr Tracker
	tr.Ok(log, "back") // nothing was wrong: silent
	for range 3 {
		tr.Fail(log, "down", errors.New("boom"))
	}
	tr.Ok(log, "back")
	tr.Ok(log, "back")
	tr.Fail(log, "down", errors.New("again"))

	var got []string
	for _, e := range logs.All() {
		got = append(got, e.Message)
	}
	want := []string{"down", "back", "down"}
	if len(got) != len(want) {
		t.Fatalf("logged %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("logged %v, want %v", got, want)
		}
	}
}
