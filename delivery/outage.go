package delivery

import "time"

// reach is what a turn learnt of the upstream.
type reach int8

const (
	notAsked   reach = iota // the turn did not contact the upstream
	answered                // any HTTP answer, whatever its status
	unanswered              // refused, reset or timed out
)

// unreachableAfter is how many attempts in a row must go unanswered
// before the loop takes the upstream for down. While it is down, one
// attempt at a time probes it, spaced by the backoff, instead of every
// held payload retrying on its own schedule: an upstream that is not
// there costs no more than one connection attempt per backoff, and when it
// comes back it is not met by a burst of retries at once. The first answer
// ends it, whatever its status.
const unreachableAfter = 3

// outage is the loop's breaker: whether the upstream is taken for down (see
// unreachableAfter), and while it is, which attempt probes it and when the
// next probe may start. What it learns holds for the settings it learnt it
// under only: new settings (a config reload, perhaps with the upstream
// fixed) end an outage, to be found again if it goes on, and a turn that
// ran with earlier settings asked the upstream of those, so it counts for
// nothing. The loop's goroutine owns it.
type outage struct {
	// now and jitter are the engine's clock and jitter source, read only
	// when a probe is put off.
	now    func() time.Time
	jitter func() float64

	// settings are those of the loop's last round.
	settings *Settings
	// unanswered counts the attempts in a row the upstream did not
	// answer; from unreachableAfter on it is down. probe is the attempt
	// probing it, nil between probes; probeAt is when the next one may
	// start, after the backoff for probesFailed.
	unanswered   int
	probe        *held
	probeAt      time.Time
	probesFailed int
	// since is when the upstream went down, zero while it answers. Unlike
	// the count it outlasts new settings: the outage that was announced
	// (logged, upstream_down) ends with the first answer, whatever the
	// settings it came under.
	since time.Time
}

// change is what taking in a turn changed of the outage, for the log.
type change int8

const (
	unchanged change = iota
	wentDown         // the unreachableAfter-th unanswered attempt in a row
	cameBack         // the first answer since it went down
)

// use makes s the settings of the attempts to come; other settings than
// the last start the count afresh.
func (o *outage) use(s *Settings) {
	if s != o.settings {
		o.settings, o.unanswered, o.probesFailed = s, 0, 0
	}
}

// down tells whether the upstream is taken for down (see unreachableAfter).
func (o *outage) down() bool { return o.unanswered >= unreachableAfter }

// mayProbe tells whether a probe may start at now, while down: none is
// running, no other attempt is either, and the backoff since the last one
// is over.
func (o *outage) mayProbe(running int, now time.Time) bool {
	return o.probe == nil && running == 0 && !now.Before(o.probeAt)
}

// probing records that h started as the probe.
func (o *outage) probing(h *held) { o.probe = h }

// startAt returns when an attempt due at due may start, given the running
// ones; false while down with an attempt running: its report comes first.
func (o *outage) startAt(due time.Time, running int) (time.Time, bool) {
	if !o.down() {
		return due, true
	}
	if o.probe != nil || running > 0 {
		return time.Time{}, false
	}
	if o.probeAt.After(due) {
		return o.probeAt, true
	}
	return due, true
}

// freed takes in what the turn of h, run with settings s, learnt of the
// upstream, when it hands back its concurrency place.
func (o *outage) freed(h *held, s *Settings, r reach) change {
	wasProbe := h == o.probe
	if wasProbe {
		o.probe = nil
	}
	if s != o.settings {
		return unchanged
	}
	return o.learn(r, wasProbe)
}

// learn takes in whether an attempt was answered: an answer ends an
// outage; the unreachableAfter-th unanswered attempt in a row starts one,
// with the first probe a backoff away, and each unanswered probe puts the
// next one off by the following step of the backoff. Attempts that were
// running when the outage began only count.
func (o *outage) learn(r reach, wasProbe bool) change {
	c := unchanged
	switch r {
	case answered:
		if !o.since.IsZero() {
			c = cameBack
		}
		o.unanswered, o.probesFailed, o.since = 0, 0, time.Time{}
	case unanswered:
		o.unanswered++
		switch {
		case o.unanswered == unreachableAfter:
			c = wentDown
			if o.since.IsZero() {
				o.since = o.now()
			}
		case wasProbe && o.down():
			o.probesFailed++
		default:
			return unchanged
		}
		o.probeAt = o.now().Add(o.settings.Backoff.Delay(o.probesFailed+1, o.jitter()))
	}
	return c
}
