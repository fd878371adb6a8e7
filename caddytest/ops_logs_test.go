package caddytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// opsLogGlobals is globalOptions plus a default log that sends every
// logger's lines, from level up, to file as JSON.
func opsLogGlobals(file, level string) string {
	return fmt.Sprintf(`{
	skip_install_trust
	admin %s
	http_port %d
	https_port %d
	grace_period 1s
	log {
		output file %s
		level %s
		format json
	}
}
`, adminAddr, relayPort, httpsPort, file, level)
}

// opsLogLine is one line of a JSON log file.
type opsLogLine struct {
	raw    string
	fields map[string]any // nil when the line is not JSON
}

func (l opsLogLine) str(k string) string {
	s, _ := l.fields[k].(string)
	return s
}

func (l opsLogLine) logger() string { return l.str("logger") }
func (l opsLogLine) level() string  { return strings.ToLower(l.str("level")) }
func (l opsLogLine) msg() string    { return l.str("msg") }

func (l opsLogLine) String() string {
	if len(l.raw) > 600 {
		return l.raw[:600] + "..."
	}
	return l.raw
}

// fromModule reports whether the line comes from one of the module's
// loggers.
func (l opsLogLine) fromModule() bool {
	return strings.HasPrefix(l.logger(), "http.handlers.webhook_relay")
}

func opsReadLog(t *testing.T, file string) []opsLogLine {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []opsLogLine
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		l := opsLogLine{raw: sc.Text()}
		if json.Unmarshal(sc.Bytes(), &l.fields) != nil {
			l.fields = nil
		}
		out = append(out, l)
	}
	return out
}

// opsWaitLog polls file until cond holds for its lines, and returns them.
func opsWaitLog(t *testing.T, file, what string, cond func([]opsLogLine) bool) []opsLogLine {
	t.Helper()
	var lines []opsLogLine
	testkit.Eventually(t, waitTimeout, func() bool {
		lines = opsReadLog(t, file)
		return cond(lines)
	}, "still waiting for %s in %s; it holds %v", what, file, testkit.Lazy(func() string {
		var b strings.Builder
		fmt.Fprintf(&b, "%d lines:\n", len(lines))
		for _, l := range lines {
			fmt.Fprintf(&b, "  %s\n", l)
		}
		return b.String()
	}))
	return lines
}

func opsHasMsg(lines []opsLogLine, logger, msg string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l.logger(), logger) && strings.Contains(l.msg(), msg) {
			return true
		}
	}
	return false
}

// opsLoadBack loads a config without logging options when the test ends,
// so that Caddy closes the test's log files and logs to stderr again
// before the temporary directory goes.
func opsLoadBack(t *testing.T) {
	t.Cleanup(func() {
		if msg := loadError(t, site("")); msg != "" {
			t.Logf("loading a plain config after the test: %s", msg)
		}
	})
}

// TestOpsLogHygiene sends every kind of request through a relay while all
// of Caddy's logs, at debug level, go to one file; then no line of the
// module and no error message of the module may contain a configured
// secret or the rejected token value, and keys may appear in the module's
// debug lines only. It also reports whether Caddy's own lines carry the
// token, and checks that the README's access log filter removes it there.
func TestOpsLogHygiene(t *testing.T) {
	const (
		token       = "tok-LOGS-s3cret-9Q"     // the current secret, from the environment
		oldToken    = "tok-OLD-s3cret-4K"      // the secret being rotated out, a literal
		hdrSecret   = "hdr-LOGS-s3cret-7Z"     // a header_up secret, from the environment
		badLiteral  = "literal-LOGS-secret-5P" // a secret of the config that fails to load
		rejected    = "guess-ABC123"           // a wrong token a sender tries
		tokenEnv    = "WEBHOOK_RELAY_OPS_LOG_TOKEN"
		hdrEnv      = "WEBHOOK_RELAY_OPS_LOG_HDR"
		deadMessage = "payload moved to the dead letters"
	)
	secrets := []string{token, oldToken, hdrSecret, badLiteral, rejected}
	t.Setenv(tokenEnv, token)
	t.Setenv(hdrEnv, hdrSecret)
	unsetEnv(t, unsetVar)

	var upOK atomic.Bool // once set, the upstream takes everything
	up := newUpstream(t, func(h *hit) reply {
		body := string(h.Body)
		switch {
		case strings.Contains(body, "stuck"):
			return reply{status: http.StatusServiceUnavailable, header: map[string]string{"Retry-After": "60"}}
		case upOK.Load():
			return reply{status: http.StatusOK}
		case strings.Contains(body, "poison"):
			return reply{status: http.StatusUnprocessableEntity}
		case strings.Contains(body, "flaky"):
			return sequence(http.StatusServiceUnavailable, http.StatusInternalServerError, http.StatusOK)(h)
		}
		return reply{status: http.StatusOK}
	})

	dir := t.TempDir()
	logFile := filepath.Join(dir, "caddy.log")
	accessFile := filepath.Join(dir, "access.log")
	opsLoadBack(t)
	name := relayName(t)
	config := func(version int) string {
		return opsLogGlobals(logFile, "DEBUG") + fmt.Sprintf(`
:%[1]d {
	log {
		output file %[2]s
		format filter {
			request>uri query {
				delete token
			}
		}
	}
	webhook_relay /in {
		upstream %[3]s/hook
		name %[4]s
		auth_query token {env.%[5]s} %[6]s
		header_up X-Relay-Secret {env.%[7]s}
		header_up X-Config-Version %[8]d
		store memory
		backoff 10ms 50ms
	}
	webhook_relay /full {
		upstream %[3]s/full
		name %[4]s-full
		auth_query token {env.%[5]s}
		max_backlog 1
		store memory
		backoff 10ms 50ms
	}
	respond 404
}
`, relayPort, accessFile, up.URL, name, tokenEnv, oldToken, hdrEnv, version)
	}
	tester := startCaddy(t, config(1))
	in := relayURL("/in", "token="+token)
	sent := 0 // requests to the relays, each gets one access log line

	// accepted, duplicate, the old secret, a wrong token, no token
	a := payload(t)
	mustAccept(t, in, a)
	expectStatus(t, post(t, in, a), http.StatusOK, "duplicate")
	mustAccept(t, relayURL("/in", "token="+oldToken+"&run=1"), payload(t))
	expectStatus(t, post(t, relayURL("/in", "token="+rejected+"&run=1"), payload(t)), http.StatusUnauthorized, "")
	expectStatus(t, post(t, relayURL("/in", "run=1"), payload(t)), http.StatusUnauthorized, "")
	expectStatus(t, post(t, in, []byte("{not json")), http.StatusBadRequest, "")
	sent += 6
	// retries, and a dead letter
	flaky, poison := payload(t, `"flaky":true`), payload(t, `"poison":true`)
	mustAccept(t, in, flaky)
	mustAccept(t, in, poison)
	sent += 2
	up.waitDelivered(t, flaky)
	up.waitFor(t, "the attempt on the 422 payload", func(hits []*hit) bool { return len(withBody(hits, poison)) > 0 })
	// a 503 from the relay: its backlog of one is taken by a payload the
	// upstream will not take for a minute
	full := relayURL("/full", "token="+token)
	mustAccept(t, full, payload(t, `"stuck":true`))
	expectStatus(t, post(t, full, payload(t)), http.StatusServiceUnavailable, "")
	sent += 2

	// a replay through the admin API
	opsWaitOverview(t, name, "the dead letter", func(s *opsRelayStatus) bool { return intOf(s.DeadLetters) == 1 })
	upOK.Store(true)
	if n := opsReplay(t, name, nil); n != 1 {
		t.Fatalf("replayed %d dead letters, want 1", n)
	}
	up.waitFor(t, "the replayed payload", func(hits []*hit) bool {
		for _, h := range withBody(hits, poison) {
			if delivered(h) {
				return true
			}
		}
		return false
	})

	// a config that fails: an unset placeholder next to a literal secret
	bad := opsLogGlobals(logFile, "DEBUG") + fmt.Sprintf(`
:%d {
	webhook_relay /in {
		upstream %s/hook
		name %s
		auth_query token %s {env.%s}
		header_up X-Relay-Secret {env.%s}
		store memory
	}
}
`, relayPort, up.URL, name, badLiteral, unsetVar, hdrEnv)
	loadMsg := loadError(t, bad)
	if loadMsg == "" {
		t.Fatal("the config with an unset secret loaded")
	}
	for _, s := range secrets {
		if strings.Contains(loadMsg, s) {
			t.Errorf("the /load error shows the secret %q: %s", s, loadMsg)
		}
	}

	// a reload, and traffic after it
	reload(t, tester, config(2))
	b, flaky2 := payload(t), payload(t, `"flaky":true`)
	upOK.Store(false)
	mustAccept(t, in, b)
	mustAccept(t, in, flaky2)
	expectStatus(t, post(t, relayURL("/in", "token="+rejected+"&run=2"), payload(t)), http.StatusUnauthorized, "")
	sent += 3
	up.waitDelivered(t, b)
	up.waitDelivered(t, flaky2)

	// every line is in: the access log has one per request, the dead
	// letter was logged
	access := opsWaitLog(t, accessFile, fmt.Sprintf("%d access log lines", sent), func(lines []opsLogLine) bool {
		return len(lines) >= sent
	})
	lines := opsWaitLog(t, logFile, "the dead letter warning", func(lines []opsLogLine) bool {
		return opsHasMsg(lines, "http.handlers.webhook_relay", deadMessage)
	})

	var keys []string
	seenKey := make(map[string]bool)
	for _, h := range up.all() {
		if h.Key != "" && !seenKey[h.Key] {
			seenKey[h.Key] = true
			keys = append(keys, h.Key)
		}
	}

	// the module's own lines
	moduleLines := 0
	for _, l := range lines {
		if l.fields == nil {
			t.Errorf("log line is not JSON: %s", l)
			continue
		}
		if !l.fromModule() {
			continue
		}
		moduleLines++
		for _, s := range secrets {
			if strings.Contains(l.raw, s) {
				t.Errorf("a line of the module's logger contains %q: %s", s, l)
			}
		}
		if l.level() != "debug" {
			for _, k := range keys {
				if strings.Contains(l.raw, k) {
					t.Errorf("a %s line of the module's logger contains the key %q (keys belong in debug lines only): %s", l.level(), k, l)
				}
			}
		}
	}
	if moduleLines == 0 {
		t.Fatalf("no line of the module's loggers in %s: the check above saw nothing", logFile)
	}
	for _, want := range []string{deadMessage, "will retry"} {
		if !opsHasMsg(lines, "http.handlers.webhook_relay", want) {
			t.Errorf("no module line %q in the debug log", want)
		}
	}

	// the module's error messages, as Caddy logs them: the msg of the
	// HTTP error lines and the admin API's error lines (the failed load)
	errorMsgs := 0
	for _, l := range lines {
		lg := l.logger()
		var msg string
		switch {
		case strings.HasPrefix(lg, "http.log.error"):
			msg = l.msg()
		case strings.HasPrefix(lg, "admin.api") && l.msg() == "request error":
			msg = l.str("error")
		default:
			continue
		}
		errorMsgs++
		for _, s := range secrets {
			if strings.Contains(msg, s) {
				t.Errorf("an error message of the module contains %q: %s", s, l)
			}
		}
	}
	if errorMsgs == 0 {
		t.Errorf("no error line in the debug log (http.log.error or admin.api request error)")
	}

	// Caddy's own lines: report, do not fail
	type finding struct{ logger, level, secret, field string }
	found := map[finding]int{}
	for _, l := range lines {
		if l.fromModule() {
			continue
		}
		for _, s := range secrets {
			if strings.Contains(l.raw, s) {
				field := "?"
				if req, ok := l.fields["request"].(map[string]any); ok && strings.Contains(fmt.Sprint(req["uri"]), s) {
					field = "request.uri"
				}
				found[finding{l.logger(), l.level(), s, field}]++
			}
		}
	}
	if len(found) == 0 {
		t.Logf("REPORT: none of Caddy's own lines in the debug log contains a secret or the rejected token")
	} else {
		var rows []string
		for f, n := range found {
			rows = append(rows, fmt.Sprintf("%s at %s: %q in %s (%d lines)", f.logger, f.level, f.secret, f.field, n))
		}
		sort.Strings(rows)
		t.Logf("REPORT: Caddy's own lines carry secrets (the README's access log filter does not reach them):\n  %s", strings.Join(rows, "\n  "))
	}

	// the README's filter on the site's access log removes the token
	if len(access) < sent {
		t.Fatalf("%d access log lines, want %d", len(access), sent)
	}
	uris := 0
	for _, l := range access {
		for _, s := range secrets {
			if strings.Contains(l.raw, s) {
				t.Errorf("the access log filtered as the README says still holds %q: %s", s, l)
			}
		}
		if req, ok := l.fields["request"].(map[string]any); ok {
			if uri, _ := req["uri"].(string); strings.HasPrefix(uri, "/in") || strings.HasPrefix(uri, "/full") {
				uris++
				if strings.Contains(uri, "token=") {
					t.Errorf("access log uri still has a token parameter: %s", uri)
				}
			}
		}
	}
	if uris < sent {
		t.Errorf("%d access log lines show the request uri, want %d (is the access log JSON?)", uris, sent)
	}
}

// TestOpsLogsFollowReload: the delivery engine of a relay lives across
// reloads, and its lines (retries, dead letters) must go where the
// current config's logging says, not to the outputs of the config that
// first opened the relay. Here the first config logs at INFO to a.log and
// the reload switches to DEBUG in b.log.
func TestOpsLogsFollowReload(t *testing.T) {
	up := newUpstream(t, func(h *hit) reply {
		switch body := string(h.Body); {
		case strings.Contains(body, "poison"):
			return reply{status: http.StatusUnprocessableEntity}
		case strings.Contains(body, "flaky"):
			return sequence(http.StatusServiceUnavailable, http.StatusOK)(h)
		}
		return reply{status: http.StatusOK}
	})
	dir := t.TempDir()
	first, second := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	opsLoadBack(t)
	config := func(file, level string) string {
		return opsLogGlobals(file, level) + fmt.Sprintf(`
:%d {
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		backoff 10ms 50ms
	}
	respond 404
}
`, relayPort, up.URL, relayName(t))
	}
	tester := startCaddy(t, config(first, "INFO"))
	in := relayURL("/in", "")
	warm := payload(t)
	mustAccept(t, in, warm)
	up.waitDelivered(t, warm)

	reload(t, tester, config(second, "DEBUG"))
	// the handler's own lines follow the reload; show that Caddy switched
	expectStatus(t, post(t, in, []byte("{not json")), http.StatusBadRequest, "")
	opsWaitLog(t, second, "the 400's error line", func(lines []opsLogLine) bool {
		return opsHasMsg(lines, "http.log.error", "not valid JSON")
	})

	flaky, poison := payload(t, `"flaky":true`), payload(t, `"poison":true`)
	mustAccept(t, in, flaky)
	mustAccept(t, in, poison)
	up.waitDelivered(t, flaky)
	up.waitFor(t, "the attempt on the 422 payload", func(hits []*hit) bool { return len(withBody(hits, poison)) > 0 })
	opsWaitOverview(t, relayName(t), "the dead letter", func(s *opsRelayStatus) bool { return intOf(s.DeadLetters) == 1 })

	for _, want := range []struct{ msg, level string }{
		{"payload moved to the dead letters", "warn"},
		{"will retry", "debug"},
	} {
		// the line is written before the state above changes; this is slack
		testkit.Poll(2*time.Second, func() bool {
			return opsHasMsg(opsReadLog(t, second), "http.handlers.webhook_relay", want.msg)
		})
		if opsHasMsg(opsReadLog(t, second), "http.handlers.webhook_relay", want.msg) {
			continue
		}
		where := "in neither file"
		if opsHasMsg(opsReadLog(t, first), "http.handlers.webhook_relay", want.msg) {
			where = "in " + filepath.Base(first) + ", the log of the config before the reload"
		}
		t.Errorf("after a reload to DEBUG logs in %s, the delivery engine's %s line %q is %s: "+
			"the engine keeps the logger of the config that first opened the relay",
			filepath.Base(second), want.level, want.msg, where)
	}
}
