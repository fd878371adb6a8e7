package caddytest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// consoleUser guards the console in the tests (with basic_auth), as the
// README tells users to.
const consoleUser = "ops"

// consoleApp is the application behind the relay in the console tests.
// Until fixed, it refuses results carrying inline images (422) and error
// results (400), and takes everything else; once fixed it takes all.
type consoleApp struct {
	fixed atomic.Bool
	*upstream
}

func newConsoleApp(t *testing.T) *consoleApp {
	app := &consoleApp{}
	app.upstream = newUpstream(t, func(h *hit) reply {
		switch {
		case app.fixed.Load():
			return reply{status: http.StatusOK}
		case bytes.Contains(h.Body, []byte(`"imageBase64Data"`)), bytes.Contains(h.Body, []byte(`"imageDataURI"`)):
			return reply{status: http.StatusUnprocessableEntity}
		case bytes.Contains(h.Body, []byte(`"errors"`)):
			return reply{status: http.StatusBadRequest}
		}
		return reply{status: http.StatusOK}
	})
	return app
}

// consolePassword is consoleUser's password; consoleHash its bcrypt hash
// (caddy hash-password), for basic_auth.
const (
	consolePassword = "console test password"
	consoleHash     = "$2a$04$ag8OuUH68qXf/NUHMawZOO/BQtMT/Y87rd8SwRWYWjAfAxDzRzkzW"
)

// consoleConfig is the console tests' site (testkit.ConsoleDirectives):
// the console behind basic_auth when hash is set, else with
// allow_anonymous.
func consoleConfig(t *testing.T, upstreamURL, hash string) string {
	return site(testkit.ConsoleDirectives(upstreamURL, relayName(t), consoleUser, hash))
}

// consoleCall makes one request to the console (mounted at /ops/, no
// basic_auth) with header lines "Name: value".
func consoleCall(t *testing.T, method, path, body string, header ...string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	a, err := send(method, relayURL("/ops/"+path, ""), rd, header...)
	if err != nil {
		t.Fatalf("%s /ops/%s: %v", method, path, err)
	}
	return a
}

// consoleError checks that a console answer is a JSON error with status.
func consoleError(t *testing.T, what string, a answer, status int, says string) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if a.status != status || json.Unmarshal([]byte(a.body), &e) != nil || !strings.Contains(e.Error, says) {
		t.Errorf("%s: status %d, body %q; want %d and a JSON error saying %q", what, a.status, a.body, status, says)
	}
}

// TestConsoleRefusesCrossSiteWrites: a replay or delete that a browser
// sends from another site, or as a plain form, does nothing; the same from
// the console's own origin, or from a client that is no browser, works.
func TestConsoleRefusesCrossSiteWrites(t *testing.T) {
	testkit.ConsoleSecrets(t)
	app := newConsoleApp(t)
	name := relayName(t)
	startCaddy(t, consoleConfig(t, app.URL, ""))
	in := relayURL("/in", "token="+os.Getenv("CONSOLE_TEST_TOKEN"))
	refused := fmt.Appendf(nil, `{"errors":[{"code":"x","taskUUID":"%s-%d"}]}`, name, payloadSeq.Add(1))
	mustAccept(t, in, refused)
	opsWaitOverview(t, name, "1 dead letter", func(s *opsRelayStatus) bool { return intOf(s.DeadLetters) == 1 })
	id := opsListDead(t, name, "").Entries[0].ID
	all := fmt.Sprintf(`{"relay":%q,"all":true}`, name)
	one := fmt.Sprintf(`{"relay":%q,"ids":[%q]}`, name, id)
	host := fmt.Sprintf("127.0.0.1:%d", relayPort)

	for _, c := range []struct {
		what   string
		body   string
		header []string
		status int
		says   string
	}{
		{"from another site", all, []string{"Origin: https://evil.example", "Sec-Fetch-Site: cross-site"}, 403, "refused"},
		{"from a sibling site", all, []string{"Origin: http://other." + host, "Sec-Fetch-Site: same-site"}, 403, "refused"},
		{"another origin, older browser", one, []string{fmt.Sprintf("Origin: http://127.0.0.2:%d", relayPort)}, 403, "refused"},
		{"a plain form post", all, []string{"Content-Type: application/x-www-form-urlencoded"}, 415, "application/json"},
		{"text/plain", all, []string{"Content-Type: text/plain"}, 415, "application/json"},
		{"neither ids nor all", fmt.Sprintf(`{"relay":%q}`, name), nil, 400, `"all": true`},
		{"ids and all", fmt.Sprintf(`{"relay":%q,"ids":[],"all":true}`, name), nil, 400, "not both"},
		{"all and match", fmt.Sprintf(`{"relay":%q,"all":true,"match":{"status":400}}`, name), nil, 400, "not both"},
		{"an empty match", fmt.Sprintf(`{"relay":%q,"match":{}}`, name), nil, 400, "match needs at least one field"},
		{"a bad match time", fmt.Sprintf(`{"relay":%q,"match":{"since":"now"}}`, name), nil, 400, "match.since"},
		{"unknown field", fmt.Sprintf(`{"relay":%q,"all":true,"everything":1}`, name), nil, 400, "want"},
		{"not JSON", `ids=1`, nil, 400, "want"},
		{"unknown relay", `{"relay":"no-such-relay","all":true}`, nil, 404, `no relay named "no-such-relay"`},
	} {
		for _, verb := range []string{"replay", "delete"} {
			consoleError(t, verb+" "+c.what, consoleCall(t, http.MethodPost, "api/"+verb, c.body, c.header...), c.status, c.says)
		}
	}
	for _, verb := range []string{"replay", "delete"} {
		a := consoleCall(t, http.MethodGet, "api/"+verb, "")
		consoleError(t, "GET api/"+verb, a, 405, "POST")
		if a.header.Get("Allow") != http.MethodPost {
			t.Errorf("GET api/%s: Allow %q", verb, a.header.Get("Allow"))
		}
	}
	if s := opsOverview(t, name); intOf(s.DeadLetters) != 1 {
		t.Fatalf("%d dead letters after refused requests, want 1", intOf(s.DeadLetters))
	}
	if n := len(withBody(app.all(), refused)); n != 1 {
		t.Fatalf("a refused replay reached the application: %d requests", n)
	}

	// the console's own origin, as its page sends it, by match
	app.fixed.Store(true)
	byMatch := fmt.Sprintf(`{"relay":%q,"match":{"status":400,"destination":"upstream"}}`, name)
	a := consoleCall(t, http.MethodPost, "api/replay", byMatch, "Origin: http://"+host, "Sec-Fetch-Site: same-origin")
	if a.status != 200 || strings.TrimSpace(a.body) != `{"replayed":1}` {
		t.Fatalf("same-origin replay: %d %s", a.status, a.body)
	}
	app.waitDelivered(t, refused)
	// no browser at all (curl): nothing left to replay or delete
	for _, c := range []struct{ verb, want string }{{"replay", `{"replayed":0}`}, {"delete", `{"deleted":0}`}} {
		for _, body := range []string{one, byMatch} {
			a := consoleCall(t, http.MethodPost, "api/"+c.verb, body)
			if a.status != 200 || strings.TrimSpace(a.body) != c.want {
				t.Errorf("%s %s of a dead letter already replayed: %d %s, want %s", c.verb, body, a.status, a.body, c.want)
			}
		}
	}
}

// TestConsolePaths: the page, its files and its JSON at any mount point,
// with headers that keep it to itself.
func TestConsolePaths(t *testing.T) {
	testkit.ConsoleSecrets(t)
	app := newConsoleApp(t)
	name := relayName(t)
	startCaddy(t, consoleConfig(t, app.URL, ""))

	page := consoleCall(t, http.MethodGet, "", "")
	if page.status != 200 || !strings.HasPrefix(page.header.Get("Content-Type"), "text/html") || !strings.Contains(page.body, `<script src="console.js"`) {
		t.Fatalf("GET /ops/: %d %q %.200s", page.status, page.header.Get("Content-Type"), page.body)
	}
	csp := page.header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "img-src 'self' data:"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %s", csp, want)
		}
	}
	if page.header.Get("X-Frame-Options") != "DENY" || page.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("page headers %v", page.header)
	}
	for _, c := range []struct{ path, contentType string }{{"console.js", "text/javascript"}, {"console.css", "text/css"}} {
		a := consoleCall(t, http.MethodGet, c.path, "")
		if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), c.contentType) || len(a.body) < 500 {
			t.Errorf("GET %s: %d %q, %d bytes", c.path, a.status, a.header.Get("Content-Type"), len(a.body))
		}
		etag := a.header.Get("ETag")
		if again := consoleCall(t, http.MethodGet, c.path, "", "If-None-Match: "+etag); etag == "" || again.status != http.StatusNotModified {
			t.Errorf("GET %s with If-None-Match %q: %d, want 304", c.path, etag, again.status)
		}
		if strings.Contains(a.body, "http://") || strings.Contains(a.body, "https://") || strings.Contains(a.body, "@import") {
			t.Errorf("%s names another address: the console loads nothing from elsewhere", c.path)
		}
	}
	var relays struct {
		Now    string           `json:"now"`
		Relays []opsRelayStatus `json:"relays"`
	}
	a := consoleCall(t, http.MethodGet, "api/relays", "")
	if a.status != 200 || json.Unmarshal([]byte(a.body), &relays) != nil || relays.Now == "" || a.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET api/relays: %d %q %s", a.status, a.header.Get("Cache-Control"), a.body)
	}
	found := false
	for _, r := range relays.Relays {
		found = found || r.Name == name
	}
	if !found {
		t.Errorf("api/relays does not list %s: %s", name, a.body)
	}

	consoleError(t, "unknown relay", consoleCall(t, http.MethodGet, "api/dead?relay=nope", ""), 404, `no relay named "nope"`)
	consoleError(t, "unknown id", consoleCall(t, http.MethodGet, "api/letter?relay="+name+"&id=00000000000000000999", ""), 404, "no dead letter")
	consoleError(t, "bad limit", consoleCall(t, http.MethodGet, "api/dead?relay="+name+"&limit=1001", ""), 400, "limit")
	consoleError(t, "unknown endpoint", consoleCall(t, http.MethodGet, "api/config", ""), 404, "no api/config")
	consoleError(t, "POST a read", consoleCall(t, http.MethodPost, "api/relays", "{}", "Content-Type: application/json"), 405, "GET")
	if a := consoleCall(t, http.MethodGet, "favicon.ico", ""); a.status != 404 {
		t.Errorf("GET favicon.ico: %d, want 404", a.status)
	}
	if a := consoleCall(t, http.MethodPost, "", "x", "Content-Type: text/plain"); a.status != 405 {
		t.Errorf("POST the page: %d, want 405", a.status)
	}

	// mounted without a trailing slash, the page's address gets one, so
	// that its relative links resolve under the mount
	noFollow := &http.Client{Transport: client.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(relayURL("/ops/sub", "x=1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/ops/sub/?x=1" {
		t.Errorf("GET /ops/sub: %d to %q, want 301 to /ops/sub/?x=1 (the address the browser sees)", resp.StatusCode, resp.Header.Get("Location"))
	}
	// mounted at /console*, /console itself is stripped to nothing: it
	// gets its slash, then the page
	startCaddy(t, site("\thandle_path /console* {\n\t\twebhook_relay_console {\n\t\t\tallow_anonymous\n\t\t}\n\t}"))
	resp, err = noFollow.Get(relayURL("/console", ""))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/console/" {
		t.Errorf("GET /console: %d to %q, want 301 to /console/", resp.StatusCode, resp.Header.Get("Location"))
	}
	if a, err := send(http.MethodGet, relayURL("/console/", ""), nil); err != nil || a.status != 200 || !strings.Contains(a.body, "console.js") {
		t.Errorf("GET /console/: %v %d", err, a.status)
	}
}

// TestConsoleCaddyfile: the directive takes allow_anonymous only, and
// needs no order.
func TestConsoleCaddyfile(t *testing.T) {
	for _, c := range []struct{ directive, says string }{
		{"webhook_relay_console extra", "wrong argument count"},
		{"webhook_relay_console {\n\t\tpath /x\n\t}", "unrecognized subdirective 'path'"},
		{"webhook_relay_console {\n\t\tallow_anonymous yes\n\t}", "wrong argument count"},
	} {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8080 {\n\t"+c.directive+"\n}\n"), nil)
		if err == nil || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "Caddyfile:") {
			t.Errorf("%q: error %v, want one saying %q and where", c.directive, err, c.says)
		}
	}
	// a matcher, and no route needed: ordered before respond like webhook_relay
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8080 {\n\trespond 404\n\twebhook_relay_console /ops/*\n}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if i, j := bytes.Index(out, []byte(`"webhook_relay_console"`)), bytes.Index(out, []byte(`"static_response"`)); i < 0 || j < 0 || i > j {
		t.Errorf("webhook_relay_console is not ordered before respond:\n%s", out)
	}
}

// TestConsoleAccess: the console serves only requests an authentication
// handler has authenticated, unless allow_anonymous is set; a request
// without one gets 403 and a page saying how to put basic_auth in front.
func TestConsoleAccess(t *testing.T) {
	testkit.ConsoleSecrets(t)
	app := newConsoleApp(t)
	credentials := "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(consoleUser+":"+consolePassword))

	// behind basic_auth: 401 without credentials, 200 with
	startCaddy(t, consoleConfig(t, app.URL, consoleHash))
	for _, p := range []string{"", "api/relays"} {
		if a := consoleCall(t, http.MethodGet, p, ""); a.status != http.StatusUnauthorized {
			t.Errorf("behind basic_auth, GET /ops/%s without credentials: %d, want 401", p, a.status)
		}
		if a := consoleCall(t, http.MethodGet, p, "", credentials); a.status != http.StatusOK {
			t.Errorf("behind basic_auth, GET /ops/%s with credentials: %d %.200s, want 200", p, a.status, a.body)
		}
	}

	// no authentication in front: 403, the page says what to do, the
	// JSON and the writes are refused too
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
	}
	handle_path /ops/* {
		webhook_relay_console
	}`, app.URL, relayName(t))))
	page := consoleCall(t, http.MethodGet, "", "")
	if page.status != http.StatusForbidden || !strings.HasPrefix(page.header.Get("Content-Type"), "text/html") {
		t.Errorf("anonymous GET /ops/: %d %q, want 403 and a page", page.status, page.header.Get("Content-Type"))
	}
	for _, says := range []string{"basic_auth {", "webhook_relay_console", "caddy hash-password", "allow_anonymous"} {
		if !strings.Contains(page.body, says) {
			t.Errorf("the 403 page does not say %q:\n%s", says, page.body)
		}
	}
	if strings.Contains(page.body, "console.js") {
		t.Errorf("the 403 page is the console page")
	}
	consoleError(t, "anonymous api/relays", consoleCall(t, http.MethodGet, "api/relays", ""), 403, "basic_auth")
	consoleError(t, "anonymous delete all", consoleCall(t, http.MethodPost, "api/delete", `{"relay":"x","all":true}`,
		"Content-Type: application/json"), 403, "basic_auth")
	if a := consoleCall(t, http.MethodGet, "console.js", ""); a.status != http.StatusForbidden {
		t.Errorf("anonymous GET console.js: %d, want 403", a.status)
	}

	// allow_anonymous: served
	startCaddy(t, consoleConfig(t, app.URL, ""))
	for _, p := range []string{"", "api/relays"} {
		if a := consoleCall(t, http.MethodGet, p, ""); a.status != http.StatusOK {
			t.Errorf("allow_anonymous, GET /ops/%s: %d, want 200", p, a.status)
		}
	}
}

// TestConsoleRedirectsToItsOwnPaths: mounted at a site's root, the console
// adds the page's slash to a path, and never to one that a browser reads
// as another host's address (//host, /\host).
func TestConsoleRedirectsToItsOwnPaths(t *testing.T) {
	startCaddy(t, globalOptions+fmt.Sprintf(`
:%d {
	webhook_relay_console {
		allow_anonymous
	}
}`, relayPort))
	noFollow := &http.Client{Transport: client.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, c := range []struct{ path, want string }{
		{"//evilhost", "/evilhost/"},
		{"//evil.example/x?y=1", "/evil.example/x/?y=1"},
		{"/%5Cevil.example/x", "/evil.example/x/"},
		{"/\\/evil.example/x", "/evil.example/x/"},
		{"/sub", "/sub/"},
	} {
		resp, err := noFollow.Get(relayURL("", "") + c.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != c.want {
			t.Errorf("GET %s: %d to %q, want 301 to %q", c.path, resp.StatusCode, resp.Header.Get("Location"), c.want)
		}
	}
}
