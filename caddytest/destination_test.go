package caddytest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// TestDestinationCaddyfileErrors: the destination directive's mistakes are
// refused when the Caddyfile is adapted, naming the destination and the
// problem, with the line.
func TestDestinationCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, block string
		want        []string
	}{
		{"no URL", "destination archive", []string{"destination: give a name and a URL"}},
		{"bad name", "destination arch/ive http://127.0.0.1:9/a", []string{`destination "arch/ive"`, "letters, digits"}},
		{"duplicate names", "destination a http://127.0.0.1:9/a\n\t\tdestination a http://127.0.0.1:9/b",
			[]string{"destination a given twice", "unique"}},
		{"unknown field", "destination a http://127.0.0.1:9/a {\n\t\t\tretries 3\n\t\t}",
			[]string{"destination a", "unrecognized option 'retries'", "filter, rate"}},
		{"rate of 0", "destination a http://127.0.0.1:9/a {\n\t\t\trate 0/s\n\t\t}",
			[]string{"destination a", "a rate of 0"}},
		{"rate without a unit", "destination a http://127.0.0.1:9/a {\n\t\t\trate 5\n\t\t}",
			[]string{"destination a", "needs a unit", "5/s"}},
		{"rate with an unknown unit", "destination a http://127.0.0.1:9/a {\n\t\t\trate 5/h\n\t\t}",
			[]string{"destination a", `unknown unit "h"`}},
		{"filter in several tokens", "destination a http://127.0.0.1:9/a {\n\t\t\tfilter body.x == 1\n\t\t}",
			[]string{"destination a", "one token", "backticks"}},
		{"field given twice", "destination a http://127.0.0.1:9/a {\n\t\t\ttimeout 1s\n\t\t\ttimeout 2s\n\t\t}",
			[]string{"destination a", "timeout given twice"}},
		{"bad concurrency", "destination a http://127.0.0.1:9/a {\n\t\t\tconcurrency 0\n\t\t}",
			[]string{"concurrency", "positive whole number"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caddyfile := ":8080 {\n\twebhook_relay {\n\t\t" + tc.block + "\n\t}\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
			if err == nil {
				t.Fatalf("no error adapting\n%s", caddyfile)
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error %q does not say where", err)
			}
		})
	}
}

// validateHandler provisions a config with one webhook_relay handler
// given as JSON (the JSON API, which skips the Caddyfile's checks).
func validateHandler(t *testing.T, handler string) error {
	t.Helper()
	js := fmt.Sprintf(`{"apps":{"http":{"servers":{"srv0":{"listen":[":%d"],"routes":[{"handle":[%s]}]}}}}}`, relayPort, handler)
	var cfg caddy.Config
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	return caddy.Validate(&cfg)
}

// TestDestinationConfigErrors: a config with a bad destination does not
// load; the error names the destination and the problem. Each case through
// the Caddyfile where it can say it, and through the JSON API.
func TestDestinationConfigErrors(t *testing.T) {
	name := relayName(t)
	for _, tc := range []struct {
		name       string
		caddyfile  string // the relay's block, or "" for JSON only
		json       string // the handler's destinations (JSON), or "" for Caddyfile only
		want       []string
		upstreamOn bool // the JSON case has upstream set too
	}{
		{name: "upstream and destination", caddyfile: "upstream http://127.0.0.1:9/u\n\t\tdestination a http://127.0.0.1:9/a",
			json: `[{"name":"a","url":"http://127.0.0.1:9/a"}]`, upstreamOn: true,
			want: []string{"upstream and destination are both given", "shorthand for destination upstream"}},
		{name: "filter does not compile", caddyfile: "destination a http://127.0.0.1:9/a {\n\t\t\tfilter `body.taskType ==`\n\t\t}",
			json: `[{"name":"a","url":"http://127.0.0.1:9/a","filter":"body.taskType =="}]`,
			want: []string{"destination a", "does not compile", "Syntax error"}},
		{name: "filter not a bool", caddyfile: "destination a http://127.0.0.1:9/a {\n\t\t\tfilter `size(key) + 1`\n\t\t}",
			json: `[{"name":"a","url":"http://127.0.0.1:9/a","filter":"size(key) + 1"}]`,
			want: []string{"destination a", "must yield a bool"}},
		{name: "URL not absolute", caddyfile: "destination a /archive",
			json: `[{"name":"a","url":"/archive"}]`,
			want: []string{"destination a", "absolute http:// or https:// URL"}},
		{name: "URL not http", caddyfile: "destination a ftp://127.0.0.1/a",
			json: `[{"name":"a","url":"ftp://127.0.0.1/a"}]`,
			want: []string{"destination a", "absolute http:// or https:// URL"}},
		{name: "duplicate names", json: `[{"name":"a","url":"http://127.0.0.1:9/a"},{"name":"a","url":"http://127.0.0.1:9/b"}]`,
			want: []string{"destination a given twice", "unique"}},
		{name: "bad name", json: `[{"name":"a b","url":"http://127.0.0.1:9/a"}]`,
			want: []string{`destination "a b"`, "letters, digits"}},
		{name: "rate of 0", json: `[{"name":"a","url":"http://127.0.0.1:9/a","rate":"0/m"}]`,
			want: []string{"destination a", "a rate of 0"}},
		{name: "rate without a unit", json: `[{"name":"a","url":"http://127.0.0.1:9/a","rate":"10"}]`,
			want: []string{"destination a", "needs a unit"}},
		{name: "unknown field", json: `[{"name":"a","url":"http://127.0.0.1:9/a","retries":3}]`,
			want: []string{"unknown field", "retries"}},
		{name: "backoff initial over max", caddyfile: "destination a http://127.0.0.1:9/a {\n\t\t\tbackoff 1m 1s\n\t\t}",
			want: []string{"destination a", "backoff: initial 1m0s is longer than max 1s"}},
		{name: "empty sign_upstream", caddyfile: "destination a http://127.0.0.1:9/a {\n\t\t\tsign_upstream {env.WEBHOOK_RELAY_TEST_UNSET_SECRET}\n\t\t}",
			want: []string{"destination a", "sign_upstream", "resolves to empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(t *testing.T, err error) {
				t.Helper()
				if err == nil {
					t.Fatal("the config loaded; want an error")
				}
				for _, want := range tc.want {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
			}
			if tc.caddyfile != "" {
				unsetEnv(t, unsetVar)
				check(t, validate(t, site(fmt.Sprintf("\twebhook_relay /in {\n\t\tname %s\n\t\tstore memory\n\t\t%s\n\t}", name, tc.caddyfile))))
			}
			if tc.json != "" {
				upstream := ""
				if tc.upstreamOn {
					upstream = `"upstream":"http://127.0.0.1:9/u",`
				}
				check(t, validateHandler(t, fmt.Sprintf(`{"handler":"webhook_relay","name":%q,%s"store":{"type":"memory"},"destinations":%s}`,
					name, upstream, tc.json)))
			}
		})
	}
}

// TestDestinationFilterIgnored: a payload the destination's filter does not
// take is answered 200 ignored, never stored or delivered, and its key is
// seen: the sender's retry is a duplicate. One it takes is delivered with
// the destination's own settings (header_up replaces the relay's). A
// filter that fails on a payload is no match, and counted.
func TestDestinationFilterIgnored(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	name := relayName(t)
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		name %s
		auth_query token tok
		store memory
		history off
		header_up X-Relay relay
		destination images %s/images {
			filter `+"`"+`body.taskType == "imageInference" && body.cost > 0.001`+"`"+`
			header_up X-Dest images
			backoff 10ms 50ms
		}
	}`, name, up.URL)))
	base := opsScrapeMetrics(t)
	in := relayURL("/in", "token=tok&src=runware")

	image := []byte(`{"taskType":"imageInference","taskUUID":"img-1","cost":0.01}`)
	expectStatus(t, post(t, in, image, "Content-Type: application/json"), http.StatusOK, "accepted")
	hits := up.waitDelivered(t, image)
	if h := hits[0]; h.Header.Get("X-Dest") != "images" || h.Header.Get("X-Relay") != "" || h.Path != "/images" {
		t.Errorf("delivered to %s with X-Dest %q, X-Relay %q; want /images with the destination's header_up only",
			h.Path, h.Header.Get("X-Dest"), h.Header.Get("X-Relay"))
	}

	video := []byte(`{"taskType":"videoInference","taskUUID":"vid-1","cost":0.5}`)
	expectStatus(t, post(t, in, video, "Content-Type: application/json"), http.StatusOK, "ignored")
	expectStatus(t, post(t, in, video, "Content-Type: application/json"), http.StatusOK, "duplicate")
	// no cost: the filter cannot be evaluated, no match, counted
	broken := []byte(`{"taskType":"imageInference","taskUUID":"img-2"}`)
	expectStatus(t, post(t, in, broken, "Content-Type: application/json"), http.StatusOK, "ignored")

	// a payload sent after the ignored ones is delivered; they never were
	last := []byte(`{"taskType":"imageInference","taskUUID":"img-3","cost":0.002}`)
	expectStatus(t, post(t, in, last, "Content-Type: application/json"), http.StatusOK, "accepted")
	up.waitDelivered(t, last)
	for _, h := range up.all() {
		if h.Key == "vid-1" || h.Key == "img-2" {
			t.Errorf("an ignored payload was delivered: %s", h)
		}
	}
	opsWaitOverview(t, name, "nothing queued or stored", func(s *opsRelayStatus) bool {
		return intOf(s.Backlog) == 0 && s.StoredBytes == 0
	})
	s := opsScrapeMetrics(t)
	r, d := "relay="+name, "destination=images"
	for what, want := range map[string]float64{"ignored": 2, "duplicate": 1, "accepted": 2} {
		if got := s.value(t, opsRequests, r, "outcome="+what) - max(base.value(t, opsRequests, r, "outcome="+what), 0); got != want {
			t.Errorf("%s{outcome=%q} grew by %v, want %v", opsRequests, what, got, want)
		}
	}
	// growth since base: the series outlive a run of the test (-count)
	grew := func(labels ...string) float64 {
		return s.value(t, labels[0], labels[1:]...) - max(base.value(t, labels[0], labels[1:]...), 0)
	}
	if got := grew("caddy_webhook_relay_filter_errors_total", r, d); got != 1 {
		t.Errorf("filter_errors_total{destination=images} grew by %v, want 1", got)
	}
	if got := grew(opsDeliveries, r, d, "result=success"); got != 2 {
		t.Errorf("deliveries_total{destination=images,result=success} grew by %v, want 2", got)
	}
}

// TestDestinationRate: 30 payloads at rate 5/s reach a real upstream one
// every 200 ms: over at least 4 s, never more than 7 within one second.
func TestDestinationRate(t *testing.T) {
	up := newUpstream(t, always(http.StatusOK))
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		name %s
		store memory
		concurrency 16
		destination upstream %s/rated {
			rate 5/s
		}
	}`, relayName(t), up.URL)))
	for i := range 30 {
		mustAccept(t, relayURL("/in", ""), fmt.Appendf(nil, `{"taskUUID":"rate-%d"}`, i), "Content-Type: application/json")
	}
	hits := up.WaitFor(t, 15*time.Second, "30 deliveries", func(h []*hit) bool { return len(h) >= 30 })
	at := make([]time.Time, len(hits))
	for i, h := range hits {
		at[i] = h.At
	}
	testkit.CheckRate(t, at, 4*time.Second, 7)
}
