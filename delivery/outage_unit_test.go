package delivery

import (
	"testing"
	"time"
)

// newTestOutage returns an outage on a fake clock, at t0, with settings
// whose backoff starts at a second and no jitter (0.5 spreads by 0 %).
func newTestOutage() (o *outage, s *Settings, clock *time.Time) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock = &t0
	o = &outage{now: func() time.Time { return *clock }, jitter: func() float64 { return 0.5 }}
	s = &Settings{Concurrency: 4, Backoff: Backoff{Initial: time.Second, Max: time.Minute}}
	o.use(s)
	return o, s, clock
}

// takeIn frees the place of h's turn and checks what changed.
func takeIn(t *testing.T, o *outage, h *held, s *Settings, r reach, want change) {
	t.Helper()
	if got := o.freed(h, s, r); got != want {
		t.Fatalf("freed(%v) = %v; want %v", r, got, want)
	}
}

func TestOutageDownAfterUnansweredInARow(t *testing.T) {
	o, s, clock := newTestOutage()
	for range unreachableAfter - 1 {
		takeIn(t, o, &held{}, s, unanswered, unchanged)
	}
	// An answer, or a turn that did not ask, starts nothing; an answer
	// starts the count again.
	takeIn(t, o, &held{}, s, notAsked, unchanged)
	takeIn(t, o, &held{}, s, answered, unchanged)
	for range unreachableAfter - 1 {
		takeIn(t, o, &held{}, s, unanswered, unchanged)
	}
	if o.down() {
		t.Fatalf("down after %d unanswered attempts; want %d", unreachableAfter-1, unreachableAfter)
	}
	takeIn(t, o, &held{}, s, unanswered, wentDown)
	if !o.down() {
		t.Fatal("not down after unreachableAfter unanswered attempts")
	}
	// The first probe is the backoff's first step away.
	if want := clock.Add(time.Second); !o.probeAt.Equal(want) {
		t.Errorf("probeAt = %v; want %v", o.probeAt, want)
	}
}

func TestOutageProbesOneAtATimeSpacedByTheBackoff(t *testing.T) {
	o, s, clock := newTestOutage()
	for range unreachableAfter - 1 {
		takeIn(t, o, &held{}, s, unanswered, unchanged)
	}
	takeIn(t, o, &held{}, s, unanswered, wentDown)
	t0 := *clock

	// Attempts that were running when the outage began still report:
	// they keep it down but do not put the probe off.
	if o.mayProbe(1, t0.Add(time.Hour)) {
		t.Error("a probe may start while another attempt runs")
	}
	takeIn(t, o, &held{}, s, unanswered, unchanged)
	if !o.probeAt.Equal(t0.Add(time.Second)) {
		t.Errorf("an attempt running when the outage began moved probeAt to %v", o.probeAt)
	}

	if o.mayProbe(0, t0.Add(time.Second-time.Nanosecond)) {
		t.Error("a probe may start before its backoff is over")
	}
	if !o.mayProbe(0, t0.Add(time.Second)) {
		t.Fatal("no probe may start once its backoff is over")
	}
	probe := &held{}
	o.probing(probe)
	if o.mayProbe(0, t0.Add(time.Hour)) {
		t.Error("a second probe may start while the first runs")
	}
	if _, ok := o.startAt(t0, 0); ok {
		t.Error("startAt gives a time while the probe runs")
	}

	// Each unanswered probe puts the next one off by the following step.
	for step, wait := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second} {
		*clock = clock.Add(time.Minute)
		takeIn(t, o, probe, s, unanswered, unchanged)
		if want := clock.Add(wait); !o.probeAt.Equal(want) {
			t.Fatalf("after failed probe %d, probeAt = %v; want %v", step+1, o.probeAt, want)
		}
		if o.probe != nil {
			t.Fatal("the probe is still recorded once it reported")
		}
		o.probing(probe)
	}

	// The first answer ends it, whatever its status.
	takeIn(t, o, probe, s, answered, cameBack)
	if at, ok := o.startAt(*clock, 0); o.down() || !ok || !at.Equal(*clock) {
		t.Fatalf("after an answer: down %v, startAt %v, %v; want up, at once", o.down(), at, ok)
	}
	// A new outage starts the backoff at its first step again.
	for range unreachableAfter - 1 {
		takeIn(t, o, &held{}, s, unanswered, unchanged)
	}
	takeIn(t, o, &held{}, s, unanswered, wentDown)
	if want := clock.Add(time.Second); !o.probeAt.Equal(want) {
		t.Errorf("probeAt of the next outage = %v; want %v", o.probeAt, want)
	}
}

func TestOutageStartAt(t *testing.T) {
	o, s, clock := newTestOutage()
	due := clock.Add(-time.Minute)
	if at, ok := o.startAt(due, 3); !ok || !at.Equal(due) {
		t.Errorf("startAt while up = %v, %v; want %v, true", at, ok, due)
	}
	for range unreachableAfter {
		o.freed(&held{}, s, unanswered)
	}
	probeAt := clock.Add(time.Second)
	if _, ok := o.startAt(due, 1); ok {
		t.Error("startAt while down with an attempt running gives a time; want to wait for its report")
	}
	if at, ok := o.startAt(due, 0); !ok || !at.Equal(probeAt) {
		t.Errorf("startAt of an entry due before the probe = %v, %v; want %v, true", at, ok, probeAt)
	}
	later := probeAt.Add(time.Hour)
	if at, ok := o.startAt(later, 0); !ok || !at.Equal(later) {
		t.Errorf("startAt of an entry due after the probe = %v, %v; want %v, true", at, ok, later)
	}
}

// What is learnt holds for the settings it was learnt under.
func TestOutageLearntUnderTheCurrentSettings(t *testing.T) {
	o, s, _ := newTestOutage()
	for range unreachableAfter {
		o.freed(&held{}, s, unanswered)
	}
	// The same settings again change nothing.
	o.use(s)
	if !o.down() {
		t.Fatal("using the same settings again ended the outage")
	}

	// New settings end the outage.
	next := &Settings{Concurrency: 1, Backoff: s.Backoff}
	probe := &held{}
	o.probing(probe)
	o.use(next)
	if o.down() {
		t.Fatal("still down under new settings")
	}
	// Turns run with the earlier settings count for nothing, but the
	// probe's place is taken back.
	for range unreachableAfter {
		takeIn(t, o, &held{}, s, unanswered, unchanged)
	}
	takeIn(t, o, probe, s, unanswered, unchanged)
	if o.down() || o.probe != nil {
		t.Fatalf("after turns at the old upstream: down %v, probe %v; want up, no probe", o.down(), o.probe)
	}
	// Under the new settings it counts again, from zero.
	for range unreachableAfter - 1 {
		takeIn(t, o, &held{}, next, unanswered, unchanged)
	}
	takeIn(t, o, &held{}, next, unanswered, wentDown)
}

// An outage that was announced ends with the first answer even when new
// settings came meanwhile (they start the count afresh), and it is not
// announced twice if the upstream still does not answer under them.
func TestOutageAnnouncedEndsWithTheFirstAnswerAcrossSettings(t *testing.T) {
	o, s, clock := newTestOutage()
	for range unreachableAfter - 1 {
		takeIn(t, o, &held{}, s, unanswered, unchanged)
	}
	takeIn(t, o, &held{}, s, unanswered, wentDown)
	since := *clock
	if !o.since.Equal(since) {
		t.Fatalf("since = %v; want %v", o.since, since)
	}

	*clock = clock.Add(time.Minute)
	s2 := &Settings{Concurrency: 4, Backoff: s.Backoff}
	o.use(s2)
	if o.down() {
		t.Fatal("still down under new settings")
	}
	for range unreachableAfter - 1 {
		takeIn(t, o, &held{}, s2, unanswered, unchanged)
	}
	takeIn(t, o, &held{}, s2, unanswered, wentDown)
	if !o.since.Equal(since) {
		t.Errorf("since = %v after going down again; want the first %v", o.since, since)
	}

	o.use(&Settings{Concurrency: 4, Backoff: s.Backoff})
	takeIn(t, o, &held{}, o.settings, answered, cameBack)
	if !o.since.IsZero() {
		t.Errorf("since = %v after the answer; want zero", o.since)
	}
	takeIn(t, o, &held{}, o.settings, answered, unchanged)
}
