package webhookrelay

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/dedupe"
	"github.com/hookrelay/caddy-webhook-relay/delivery"
	"github.com/hookrelay/caddy-webhook-relay/filter"
	"github.com/hookrelay/caddy-webhook-relay/internal/faultlog"
	"github.com/hookrelay/caddy-webhook-relay/ratelimit"
	"github.com/hookrelay/caddy-webhook-relay/verify"
)

// UpstreamDestination is the name of the destination that upstream (or the
// inline URL) is shorthand for: the engine's default one.
const UpstreamDestination = delivery.DefaultDestination

// Destination is one place a relay delivers payloads to. Its delivery
// settings default to the relay's.
type Destination struct {
	// Name addresses the destination in metrics (label destination), logs
	// and dead letters. Letters, digits, '.', '_' and '-'; unique within a
	// relay. Required.
	Name string `json:"name"`

	// URL is where payloads go (http or https), as the relay's upstream:
	// its own query parameters are kept, the incoming ones, minus the
	// auth parameters, added. Placeholders are resolved at provision
	// time. Required.
	URL string `json:"url"`

	// Filter is a CEL expression that chooses the payloads this
	// destination takes, evaluated once when a payload is admitted, over
	// body (the body parsed as JSON, null when it is not JSON), headers
	// (first value of each, looked up without regard to case), query (the
	// query minus the auth parameters) and key (the dedupe key). It must
	// yield a bool; one that fails on a payload (a missing field, a type
	// mismatch) does not match, and is counted in
	// caddy_webhook_relay_filter_errors_total. Empty: every payload.
	// E.g. `body.taskType == "imageInference"`.
	Filter string `json:"filter,omitempty"`

	// Rate bounds the delivery attempts started for this destination,
	// retries included: "<n>/s" or "<n>/m", at most n attempts within any
	// one second or minute, spread evenly, one every unit/n, not in a
	// burst. Per process with the bolt and memory stores; shared by every
	// instance with the Redis store. Empty: no bound but Concurrency.
	Rate string `json:"rate,omitempty"`

	// Concurrency bounds the attempts running at once for this
	// destination. Default: the relay's.
	Concurrency int `json:"concurrency,omitempty"`

	// Timeout bounds one attempt. Default: the relay's.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// BackoffInitial and BackoffMax are the retry schedule, as the
	// relay's. Default: the relay's.
	BackoffInitial caddy.Duration `json:"backoff_initial,omitempty"`
	BackoffMax     caddy.Duration `json:"backoff_max,omitempty"`

	// GiveUpAfter is how long a payload keeps being retried before it is
	// a dead letter. Default: the relay's.
	GiveUpAfter caddy.Duration `json:"give_up_after,omitempty"`

	// HeaderUp are extra headers set on every request to this
	// destination. Given, they replace the relay's header_up; else the
	// relay's apply.
	HeaderUp http.Header `json:"header_up,omitempty"`

	// SignUpstream is a Standard Webhooks secret signing every attempt
	// to this destination, as the relay's sign_upstream. Default: the
	// relay's.
	SignUpstream string `json:"sign_upstream,omitempty"`
}

// destination is a Destination resolved and checked.
type destination struct {
	name     string
	filter   *filter.Filter // nil: every payload
	rate     ratelimit.Rate // zero: no bound
	settings *delivery.Settings
	// filterErrors counts evaluations that failed; filterErr logs the
	// first of an episode of them.
	filterErrors interface{ Inc() }
	filterErr    faultlog.Tracker
}

// destinationList is the relay's destinations as configured: Destinations,
// or the one upstream stands for.
func (h *Handler) destinationList() ([]Destination, error) {
	switch {
	case h.Upstream != "" && len(h.Destinations) > 0:
		return nil, fmt.Errorf("upstream and destination are both given: upstream <url> is shorthand for destination %s <url>; "+
			"use one or the other", UpstreamDestination)
	case h.Upstream != "":
		return []Destination{{Name: UpstreamDestination, URL: h.Upstream}}, nil
	case len(h.Destinations) == 0:
		return nil, fmt.Errorf("upstream is required: the URL payloads are forwarded to (or give destinations)")
	}
	return h.Destinations, nil
}

// checkDestinations checks what can be checked of the destinations before
// anything is resolved: names, rates, filters and the settings' ranges.
// Every message names the destination.
func checkDestinations(dests []Destination) error {
	seen := make(map[string]bool)
	for _, d := range dests {
		if !validName.MatchString(d.Name) {
			return fmt.Errorf("destination %q: name: use 1 to 64 letters, digits, '.', '_' or '-'", d.Name)
		}
		if seen[d.Name] {
			return fmt.Errorf("destination %s given twice: destination names are unique within a relay", d.Name)
		}
		seen[d.Name] = true
		if d.URL == "" {
			return fmt.Errorf("destination %s: give its URL", d.Name)
		}
		if d.Rate != "" {
			if _, err := ratelimit.Parse(d.Rate); err != nil {
				return fmt.Errorf("destination %s: %v", d.Name, err)
			}
		}
		if d.Filter != "" {
			if _, err := filter.Compile(d.Filter); err != nil {
				return fmt.Errorf("destination %s: %v", d.Name, err)
			}
		}
		switch {
		case d.Concurrency < 0:
			return fmt.Errorf("destination %s: concurrency must be positive", d.Name)
		case d.Timeout < 0, d.BackoffInitial < 0, d.BackoffMax < 0, d.GiveUpAfter < 0:
			return fmt.Errorf("destination %s: timeout, backoff and give_up_after must be positive durations", d.Name)
		}
	}
	return nil
}

// resolveDestination resolves d's placeholders and secrets, and makes its
// delivery settings: the relay's, with d's own where it has them.
func (h *Handler) resolveDestination(repl *caddy.Replacer, d Destination, relayHeaderUp http.Header) (*destination, error) {
	u, err := resolveUpstream(repl, d.URL)
	if err != nil {
		if d.Name == UpstreamDestination && d.URL == h.Upstream {
			return nil, err
		}
		return nil, fmt.Errorf("destination %s: %v", d.Name, strings.TrimPrefix(err.Error(), "upstream "))
	}
	out := &destination{name: d.Name}
	if d.Filter != "" {
		if out.filter, err = filter.Compile(d.Filter); err != nil {
			return nil, fmt.Errorf("destination %s: %v", d.Name, err)
		}
	}
	if d.Rate != "" {
		if out.rate, err = ratelimit.Parse(d.Rate); err != nil {
			return nil, fmt.Errorf("destination %s: %v", d.Name, err)
		}
	}
	s := &delivery.Settings{
		Destination:   d.Name,
		Upstream:      u,
		Timeout:       time.Duration(orRelay(d.Timeout, h.Timeout)),
		Concurrency:   orRelay(d.Concurrency, h.Concurrency),
		Backoff:       delivery.Backoff{Initial: time.Duration(orRelay(d.BackoffInitial, h.BackoffInitial)), Max: time.Duration(orRelay(d.BackoffMax, h.BackoffMax))},
		GiveUpAfter:   time.Duration(orRelay(d.GiveUpAfter, h.GiveUpAfter)),
		HeaderUp:      relayHeaderUp,
		SignKey:       h.signKey,
		MaxDead:       h.MaxDead,
		DeadRetention: time.Duration(h.DeadRetention),
		Rate:          out.rate,
		Logger:        h.logger.With(zap.String("relay", h.Name), zap.String("destination", d.Name)),
	}
	if s.Backoff.Initial > s.Backoff.Max {
		return nil, fmt.Errorf("destination %s: backoff: initial %s is longer than max %s", d.Name, s.Backoff.Initial, s.Backoff.Max)
	}
	if d.HeaderUp != nil {
		if s.HeaderUp, err = resolveHeaderUp(repl, d.HeaderUp); err != nil {
			return nil, fmt.Errorf("destination %s: %v", d.Name, err)
		}
	}
	if d.SignUpstream != "" {
		secret, err := repl.ReplaceOrErr(d.SignUpstream, true, true)
		if err != nil || secret == "" {
			return nil, fmt.Errorf("destination %s: sign_upstream: the secret resolves to empty or has an empty placeholder (%s); set it",
				d.Name, placeholderNames(d.SignUpstream))
		}
		if s.SignKey, err = verify.StandardKey(secret); err != nil {
			return nil, fmt.Errorf("destination %s: sign_upstream: %v", d.Name, err)
		}
	}
	out.settings = s
	return out, nil
}

// orRelay returns a destination's v, or the relay's def when v is the zero value.
func orRelay[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// takes evaluates d's filter on a payload: whether d takes it. A filter that
// cannot be evaluated counts as no match; the error is counted and logged
// once per episode (until a payload evaluates again).
func (h *Handler) takes(d *destination, in *filter.Input) bool {
	if d.filter == nil {
		return true
	}
	ok, err := d.filter.Match(*in)
	if err != nil {
		d.filterErrors.Inc()
		d.filterErr.Fail(h.logger, "a destination's filter cannot be evaluated on a payload; counting it as no match", err,
			zap.String("relay", h.Name), zap.String("destination", d.name))
		return false
	}
	d.filterErr.Ok(h.logger, "the destination's filter evaluates again")
	return ok
}

// filterInput is what the filters see of a payload: the body parsed lazily
// by parseBody (nil when no filter reads it), the headers, the query minus
// the auth parameters, the key.
func filterInput(r *http.Request, rawQuery string, body []byte, key string, parseBody func([]byte) any, parseQuery bool) *filter.Input {
	in := &filter.Input{Headers: r.Header, Key: key}
	if parseBody != nil {
		in.Body = parseBody(body)
	}
	if parseQuery {
		in.Query, _ = url.ParseQuery(rawQuery) // a malformed part is left out
	}
	return in
}

// anyFilterReadsQuery tells whether one of dests' filters reads the query,
// which is parsed for them only then.
func anyFilterReadsQuery(dests []*destination) bool {
	return slices.ContainsFunc(dests, func(d *destination) bool { return d.filter != nil && d.filter.UsesQuery() })
}

// bodyParser is how the filters get the body: nil when none reads it; when
// the key reads JSON, Key has refused a body that is not JSON before the
// filters run, so it is not checked again (on 6 MiB that takes ~15 ms).
func bodyParser(k *dedupe.Keyer, dests []*destination) func([]byte) any {
	switch {
	case !anyFilterReadsBody(dests):
		return nil
	case k.ReadsJSON():
		return filter.ParseValidBody
	}
	return filter.ParseBody
}

// anyFilterReadsBody tells whether one of dests' filters reads the body.
func anyFilterReadsBody(dests []*destination) bool {
	return slices.ContainsFunc(dests, func(d *destination) bool { return d.filter != nil && d.filter.UsesBody() })
}
