package webhookrelay

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookrelay/caddy-webhook-relay/dedupe"
	"github.com/hookrelay/caddy-webhook-relay/filter"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

// filterHandler is a relay whose one destination has the filter expr, with
// the key sources keySources ("body" when none is given).
func filterHandler(t *testing.T, expr string, keySources ...string) (*Handler, prometheus.Counter, *observer.ObservedLogs) {
	t.Helper()
	f, err := filter.Compile(expr)
	if err != nil {
		t.Fatal(err)
	}
	if len(keySources) == 0 {
		keySources = []string{"body"}
	}
	keyer, err := dedupe.NewKeyer(keySources)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := compileAuth(caddy.NewReplacer(), map[string][]string{"token": {"s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	errs := prometheus.NewCounter(prometheus.CounterOpts{Name: "filter_errors"})
	core, logs := observer.New(zap.InfoLevel)
	h := &Handler{Name: "r", auth: auth, logger: zap.New(core), keyer: keyer,
		dests: []*destination{{name: "archive", filter: f, filterErrors: errs}}}
	h.parseBody = bodyParser(h.keyer, h.dests)
	h.parseQuery = anyFilterReadsQuery(h.dests)
	return h, errs, logs
}

// takes runs the ack path's filter step on a request to /hook?<query>.
func takes(t *testing.T, h *Handler, query, body string, header http.Header, key string) bool {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/hook?"+query, strings.NewReader(body))
	for k, v := range header {
		r.Header[k] = v
	}
	raw, err := h.checkQuery(r.URL.RawQuery)
	if err != nil {
		t.Fatal(err)
	}
	return h.route(&queue.Entry{}, r, raw, []byte(body), key)
}

// TestRouteFansOut: every destination whose filter takes a payload gets a
// delivery; one alone is the entry's Destination, several its
// Destinations, in the config's order; a filter that cannot be evaluated
// takes nothing.
func TestRouteFansOut(t *testing.T) {
	h, _, _ := filterHandler(t, `body.taskType == "imageInference"`)
	video, err := filter.Compile(`body.taskType == "videoInference"`)
	if err != nil {
		t.Fatal(err)
	}
	broken, err := filter.Compile(`body.missing.field == 1`)
	if err != nil {
		t.Fatal(err)
	}
	errs := prometheus.NewCounter(prometheus.CounterOpts{Name: "filter_errors_2"})
	h.dests = append([]*destination{{name: "app"}}, h.dests...)
	h.dests = append(h.dests, &destination{name: "video", filter: video, filterErrors: errs},
		&destination{name: "broken", filter: broken, filterErrors: errs})
	h.parseBody = bodyParser(h.keyer, h.dests)
	route := func(body string) *queue.Entry {
		r := httptest.NewRequest(http.MethodPost, "/hook", strings.NewReader(body))
		e := &queue.Entry{}
		if !h.route(e, r, "", []byte(body), "k") {
			t.Fatalf("route(%s): no destination took it", body)
		}
		return e
	}
	if e := route(`{"taskType":"imageInference"}`); e.Destination != "" || !slices.Equal(e.Destinations, []string{"app", "archive"}) {
		t.Errorf("image: Destination %q, Destinations %v; want none and [app archive]", e.Destination, e.Destinations)
	}
	if e := route(`{"taskType":"audioInference"}`); e.Destination != "app" || e.Destinations != nil {
		t.Errorf("audio: Destination %q, Destinations %v; want app alone", e.Destination, e.Destinations)
	}
	if n := counted(errs); n != 2 {
		t.Errorf("filter errors counted: %v, want 2 (broken, once per payload)", n)
	}
}

// TestFilterInput: a filter sees the body, the headers, the query without
// the auth parameters, and the key.
func TestFilterInput(t *testing.T) {
	for _, c := range []struct {
		expr string
		want bool
	}{
		{`body.taskType == "imageInference"`, true},
		{`body.taskType == "videoInference"`, false},
		{`headers["x-runware-event"] == "done"`, true},
		{`query.source == "runware"`, true},
		{`!("token" in query)`, true}, // the auth parameter is not the filter's to see
		{`key == "task-1"`, true},
	} {
		h, errs, _ := filterHandler(t, c.expr)
		got := takes(t, h, "token=s3cret&source=runware", `{"taskType":"imageInference","imageURL":"https://x/i.png"}`,
			http.Header{"X-Runware-Event": {"done"}}, "task-1")
		if got != c.want {
			t.Errorf("%s: takes = %v, want %v", c.expr, got, c.want)
		}
		if n := counted(errs); n != 0 {
			t.Errorf("%s: %v filter errors", c.expr, n)
		}
	}
	// a body that is not JSON is null
	h, _, _ := filterHandler(t, `body == null`)
	if !takes(t, h, "token=s3cret", "not json", nil, "") {
		t.Error("a body that is not JSON is not null to the filter")
	}
}

// TestFilterBodyCheckedOnce: a key that reads JSON has refused a body that
// is not JSON before the filters run, so the filters' parse does not check
// it again; a key that does not read JSON leaves the check to the parse, and
// such a body is null to the filters.
func TestFilterBodyCheckedOnce(t *testing.T) {
	task := `{"taskType":"imageInference","taskUUID":"t-1","imageUUID":"i-1"}`
	h, _, _ := filterHandler(t, `body.taskType == "imageInference"`, "runware")
	if !takes(t, h, "token=s3cret", task, nil, "rw:t-1/i-1") {
		t.Error("key runware: the filter does not see the parsed body")
	}
	if reflect.ValueOf(h.parseBody).Pointer() != reflect.ValueOf(filter.ParseValidBody).Pointer() {
		t.Error("key runware: the filters check again that the body is JSON")
	}

	h, _, _ = filterHandler(t, `body == null`, "body")
	for _, notJSON := range []string{"not json", task[:len(task)-1]} {
		if !takes(t, h, "token=s3cret", notJSON, nil, "") {
			t.Errorf("key body: %q is not null to the filter", notJSON)
		}
	}
	if takes(t, h, "token=s3cret", task, nil, "") {
		t.Error("key body: a JSON body is null to the filter")
	}

	// no filter reads the body: it is not parsed
	h, _, _ = filterHandler(t, `headers["x-runware-event"] == "done"`, "runware")
	if h.parseBody != nil {
		t.Error("the body is parsed though no filter reads it")
	}
}

// TestFilterErrorCountedLoggedOnce: an evaluation error is no match, counted
// each time, logged once per episode.
func TestFilterErrorCountedLoggedOnce(t *testing.T) {
	h, errs, logs := filterHandler(t, `body.cost > 0.5`)
	for range 3 {
		if takes(t, h, "token=s3cret", `{"taskType":"imageInference"}`, nil, "k") {
			t.Fatal("a filter that fails took the payload")
		}
	}
	if n := counted(errs); n != 3 {
		t.Fatalf("%v filter errors counted, want 3", n)
	}
	if n := logs.FilterMessageSnippet("cannot be evaluated").Len(); n != 1 {
		t.Fatalf("logged %d times, want once", n)
	}
	if !takes(t, h, "token=s3cret", `{"cost":1}`, nil, "k") {
		t.Fatal("cost 1 not taken")
	}
	if n := logs.FilterMessageSnippet("evaluates again").Len(); n != 1 {
		t.Fatalf("the end of the episode logged %d times, want once", n)
	}
	takes(t, h, "token=s3cret", `{}`, nil, "k")
	if n := logs.FilterMessageSnippet("cannot be evaluated").Len(); n != 2 {
		t.Fatalf("a new episode logged %d times in all, want twice", n)
	}
	for _, e := range logs.All() {
		if e.ContextMap()["destination"] == nil && strings.Contains(e.Message, "cannot be evaluated") {
			t.Error("the log does not name the destination")
		}
	}
}

// TestFilterNoneTakesAll: without filters nothing is parsed and every payload
// is taken.
func TestFilterNoneTakesAll(t *testing.T) {
	h := &Handler{dests: []*destination{{name: "upstream"}}}
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	e := &queue.Entry{}
	if !h.route(e, r, "", []byte("x"), "") || e.Destination != "upstream" {
		t.Fatalf("a destination without a filter did not take the payload (Destination %q)", e.Destination)
	}
}

func counted(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// TestDestinationSettings: a destination's delivery settings are its own
// where it gives them, else the relay's.
func TestDestinationSettings(t *testing.T) {
	h := &Handler{Name: "r", logger: zap.NewNop()}
	h.applyDefaults()
	h.Timeout = caddy.Duration(7 * time.Second)
	relayHeaders := http.Header{"X-Relay": {"1"}}
	repl := caddy.NewReplacer()
	plain, err := h.resolveDestination(repl, Destination{Name: "a", URL: "http://127.0.0.1:9/a"}, relayHeaders)
	if err != nil {
		t.Fatal(err)
	}
	s := plain.settings
	if s.Timeout != 7*time.Second || s.Concurrency != DefaultConcurrency || s.GiveUpAfter != DefaultGiveUpAfter ||
		s.Backoff.Initial != DefaultBackoffInitial || s.Backoff.Max != DefaultBackoffMax || s.HeaderUp.Get("X-Relay") != "1" ||
		!s.Rate.IsZero() || s.Upstream.String() != "http://127.0.0.1:9/a" {
		t.Errorf("a destination without settings: %+v", s)
	}
	own, err := h.resolveDestination(repl, Destination{Name: "b", URL: "https://example.com/b", Rate: "300/m", Concurrency: 2,
		Timeout: caddy.Duration(time.Second), BackoffInitial: caddy.Duration(time.Second), BackoffMax: caddy.Duration(time.Minute),
		GiveUpAfter: caddy.Duration(time.Hour), HeaderUp: http.Header{"X-Dest": {"b"}}}, relayHeaders)
	if err != nil {
		t.Fatal(err)
	}
	s = own.settings
	if s.Timeout != time.Second || s.Concurrency != 2 || s.GiveUpAfter != time.Hour || s.Backoff.Initial != time.Second ||
		s.Backoff.Max != time.Minute || s.HeaderUp.Get("X-Dest") != "b" || s.HeaderUp.Get("X-Relay") != "" ||
		s.Rate.String() != "300/m" {
		t.Errorf("a destination with its own settings: %+v", s)
	}
}
