package caddytest

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// opsScrape is one scrape of the admin endpoint's /metrics.
type opsScrape map[string]*dto.MetricFamily

// opsScrapeMetrics scrapes the admin endpoint's /metrics and parses the
// text exposition.
func opsScrapeMetrics(t *testing.T) opsScrape {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, opsAdmin+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("scraping /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping /metrics: status %d: %s", resp.StatusCode, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return families
}

// series returns the samples of family name whose labels include every
// label in want ("name=value" pairs).
func (s opsScrape) series(name string, want ...string) []*dto.Metric {
	f := s[name]
	if f == nil {
		return nil
	}
	var out []*dto.Metric
	for _, m := range f.GetMetric() {
		labels := make(map[string]string)
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for _, w := range want {
			k, v, _ := strings.Cut(w, "=")
			if labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

// value is the value of the one sample of name with labels (counter,
// gauge or untyped), or -1 when there is none; two samples fail the test.
func (s opsScrape) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	ms := s.series(name, labels...)
	switch len(ms) {
	case 0:
		return -1
	case 1:
	default:
		t.Fatalf("%s%v: %d samples, want one", name, labels, len(ms))
	}
	m := ms[0]
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	t.Fatalf("%s%v: not a counter or gauge", name, labels)
	return 0
}

// histCount is the sample count of the histogram name with labels, or -1.
func (s opsScrape) histCount(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	ms := s.series(name, labels...)
	if len(ms) != 1 || ms[0].Histogram == nil {
		return -1
	}
	return float64(ms[0].Histogram.GetSampleCount())
}

const (
	opsRequests   = "caddy_webhook_relay_requests_total"
	opsDeliveries = "caddy_webhook_relay_deliveries_total"
	opsBacklog    = "caddy_webhook_relay_backlog"
	opsDead       = "caddy_webhook_relay_dead_letters"
	opsOldest     = "caddy_webhook_relay_oldest_queued_age_seconds"
	opsInFlight   = "caddy_webhook_relay_in_flight"
	opsAck        = "caddy_webhook_relay_ack_duration_seconds"
	opsDelivery   = "caddy_webhook_relay_delivery_duration_seconds"
)

// opsMetricsWant is what one relay's metrics should read. Counters and
// histogram counts are counted from base, a scrape taken when the test
// started: they live in the process, and a relay name used again (go test
// -count=2) continues its series.
type opsMetricsWant struct {
	base       opsScrape
	requests   map[string]float64 // increase by outcome; outcomes not listed must not increase
	deliveries map[string]float64 // increase by result; results not listed must not increase
	backlog    float64
	dead       float64
}

var (
	opsOutcomes = []string{"accepted", "duplicate", "unauthorized", "too_large", "bad_request", "unavailable", "method_not_allowed", "challenge", "ignored"}
	opsResults  = []string{"success", "retry", "dead"}
)

func (w opsMetricsWant) totals() (requests, deliveries float64) {
	for _, v := range w.requests {
		requests += v
	}
	for _, v := range w.deliveries {
		deliveries += v
	}
	return requests, deliveries
}

// diff says how s differs from w for relay.
func (w opsMetricsWant) diff(t *testing.T, s opsScrape, relay string) []string {
	t.Helper()
	var diffs []string
	base := func(v float64) float64 { return max(v, 0) }
	check := func(what string, got, want float64) {
		if got != want {
			diffs = append(diffs, fmt.Sprintf("%s = %v, want %v", what, got, want))
		}
	}
	r := "relay=" + relay
	for _, o := range opsOutcomes {
		check(fmt.Sprintf("%s{outcome=%q}", opsRequests, o), s.value(t, opsRequests, r, "outcome="+o),
			base(w.base.value(t, opsRequests, r, "outcome="+o))+w.requests[o])
	}
	for _, res := range opsResults {
		// a relay with upstream delivers to the destination named upstream
		check(fmt.Sprintf("%s{destination=\"upstream\",result=%q}", opsDeliveries, res), s.value(t, opsDeliveries, r, "destination=upstream", "result="+res),
			base(w.base.value(t, opsDeliveries, r, "destination=upstream", "result="+res))+w.deliveries[res])
	}
	check(opsBacklog, s.value(t, opsBacklog, r), w.backlog)
	check(opsDead, s.value(t, opsDead, r), w.dead)
	reqs, dels := w.totals()
	check(opsAck+"_count", s.histCount(t, opsAck, r), base(w.base.histCount(t, opsAck, r))+reqs)
	check(opsDelivery+"_count", s.histCount(t, opsDelivery, r, "destination=upstream"), base(w.base.histCount(t, opsDelivery, r, "destination=upstream"))+dels)
	return diffs
}

// opsWaitMetrics scrapes until the relay's metrics read as want (they are
// updated in the background, a moment after what the test can observe),
// and fails the test with the differences after waitTimeout.
func opsWaitMetrics(t *testing.T, relay, what string, want opsMetricsWant) opsScrape {
	t.Helper()
	var s opsScrape
	var diffs []string
	testkit.Eventually(t, waitTimeout, func() bool {
		s = opsScrapeMetrics(t)
		diffs = want.diff(t, s, relay)
		return len(diffs) == 0
	}, "%s: the metrics of relay %s still differ:\n  %s", what, relay, testkit.Lazy(func() string { return strings.Join(diffs, "\n  ") }))
	return s
}

// TestOpsMetrics scrapes the admin endpoint's /metrics after a known
// scenario and checks exact counts, the gauges and the histograms; then a
// reload (same relay name) must keep the counts and keep counting.
func TestOpsMetrics(t *testing.T) {
	up := newUpstream(t, func(h *hit) reply {
		body := string(h.Body)
		switch {
		case strings.Contains(body, "poison"):
			return reply{status: http.StatusUnprocessableEntity}
		case strings.Contains(body, "flaky"):
			return sequence(http.StatusServiceUnavailable, http.StatusOK)(h)
		case strings.Contains(body, "stuck"):
			// retried only after a minute: it stays in the backlog
			return reply{status: http.StatusServiceUnavailable, header: map[string]string{"Retry-After": "60"}}
		}
		return reply{status: http.StatusOK}
	})
	name := relayName(t)
	config := func(version int) string {
		return relayBlock(t, up.URL, fmt.Sprintf(`auth_query token metrics-tok
		max_body 1KiB
		header_up X-Config-Version %d`, version))
	}
	tester := startCaddy(t, config(1))
	in := relayURL("/in", "token=metrics-tok")

	// Before any request the relay's series exist (at zero, unless a
	// relay of this name counted before in this process).
	base := opsScrapeMetrics(t)
	for _, o := range opsOutcomes {
		if base.value(t, opsRequests, "relay="+name, "outcome="+o) < 0 {
			t.Errorf("%s{relay=%q,outcome=%q} is not exported before the first request", opsRequests, name, o)
		}
	}
	for _, res := range opsResults {
		if base.value(t, opsDeliveries, "relay="+name, "result="+res) < 0 {
			t.Errorf("%s{relay=%q,result=%q} is not exported before the first delivery", opsDeliveries, name, res)
		}
	}

	ok, flaky, poison := payload(t), payload(t, `"flaky":true`), payload(t, `"poison":true`)
	mustAccept(t, in, ok)
	mustAccept(t, in, flaky)
	mustAccept(t, in, poison)
	expectStatus(t, post(t, in, ok), http.StatusOK, "duplicate")
	expectStatus(t, post(t, relayURL("/in", "token=wrong"), payload(t)), http.StatusUnauthorized, "")
	expectStatus(t, post(t, in, []byte("not json")), http.StatusBadRequest, "")
	a, err := send(http.MethodGet, in, nil)
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, a, http.StatusMethodNotAllowed, "")
	expectStatus(t, post(t, in, payload(t, `"pad":"`+strings.Repeat("x", 2048)+`"`)), http.StatusRequestEntityTooLarge, "")
	up.waitDelivered(t, ok)
	up.waitDelivered(t, flaky)
	up.waitFor(t, "the attempt on the 422 payload", func(hits []*hit) bool { return len(withBody(hits, poison)) > 0 })

	first := opsMetricsWant{
		base:       base,
		requests:   map[string]float64{"accepted": 3, "duplicate": 1, "unauthorized": 1, "bad_request": 1, "method_not_allowed": 1, "too_large": 1},
		deliveries: map[string]float64{"success": 2, "retry": 1, "dead": 1},
		backlog:    0,
		dead:       1,
	}
	s := opsWaitMetrics(t, name, "after the first scenario", first)
	r := "relay=" + name
	if v := s.value(t, opsOldest, r); v != 0 {
		t.Errorf("%s = %v with an empty backlog, want 0", opsOldest, v)
	}
	if v := s.value(t, opsInFlight, r); v != 0 {
		t.Errorf("%s = %v with nothing to deliver, want 0", opsInFlight, v)
	}
	for _, fam := range []string{opsRequests, opsDeliveries} {
		if got := s[fam].GetType(); got != dto.MetricType_COUNTER {
			t.Errorf("%s is a %s, want a counter", fam, got)
		}
	}
	for _, fam := range []string{opsBacklog, opsDead, opsOldest, opsInFlight} {
		if got := s[fam].GetType(); got != dto.MetricType_GAUGE {
			t.Errorf("%s is a %s, want a gauge", fam, got)
		}
	}
	for _, fam := range []string{opsAck, opsDelivery} {
		if got := s[fam].GetType(); got != dto.MetricType_HISTOGRAM {
			t.Errorf("%s is a %s, want a histogram", fam, got)
		}
	}

	// A reload with a slightly changed config and the same relay name: a
	// new metrics registry, the same collectors. Nothing is reset.
	reload(t, tester, config(2))
	s = opsScrapeMetrics(t)
	if diffs := first.diff(t, s, name); len(diffs) > 0 {
		t.Errorf("right after a reload the metrics changed:\n  %s", strings.Join(diffs, "\n  "))
	}
	// a second reload back, for good measure (registering in a registry
	// that already saw the collectors, then in a fresh one again)
	reload(t, tester, config(3))
	if diffs := first.diff(t, opsScrapeMetrics(t), name); len(diffs) > 0 {
		t.Errorf("after a second reload the metrics changed:\n  %s", strings.Join(diffs, "\n  "))
	}

	// and they keep counting
	again, stuck := payload(t), payload(t, `"stuck":true`)
	mustAccept(t, in, again)
	expectStatus(t, post(t, in, again), http.StatusOK, "duplicate")
	expectStatus(t, post(t, relayURL("/in", ""), payload(t)), http.StatusUnauthorized, "")
	mustAccept(t, in, stuck)
	hits := up.waitDelivered(t, again)
	if v := hits[0].Header.Get("X-Config-Version"); v != "3" {
		t.Errorf("after the reloads the payload went out with X-Config-Version %q, want 3", v)
	}
	up.waitFor(t, "the attempt on the stuck payload", func(hits []*hit) bool { return len(withBody(hits, stuck)) > 0 })

	second := opsMetricsWant{
		base:       base,
		requests:   map[string]float64{"accepted": 5, "duplicate": 2, "unauthorized": 2, "bad_request": 1, "method_not_allowed": 1, "too_large": 1},
		deliveries: map[string]float64{"success": 3, "retry": 2, "dead": 1},
		backlog:    1,
		dead:       1,
	}
	s = opsWaitMetrics(t, name, "after the reloads", second)
	if v := s.value(t, opsOldest, r); v <= 0 || v > waitTimeout.Seconds()+5 {
		t.Errorf("%s = %v with one payload waiting since a moment ago, want a small positive age", opsOldest, v)
	}
	// the age grows while it waits
	age := s.value(t, opsOldest, r)
	testkit.Eventually(t, waitTimeout, func() bool { return opsScrapeMetrics(t).value(t, opsOldest, r) > age },
		"%s did not grow from %v", opsOldest, age)
}
