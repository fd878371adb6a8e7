package caddytest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	caddytester "github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/hookrelay/caddy-webhook-relay"
	"github.com/hookrelay/caddy-webhook-relay/internal/caddyhome"
	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// TestMain gives the in-process Caddy, and every caddy the tests run, config
// and data folders of their own, removed afterwards: the tests' configs
// (with their secrets) never overwrite the user's autosave.json, and their
// CA and files never land in the user's data folder.
func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "caddytest-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "caddytest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := caddyhome.Use(dir); err != nil {
		fmt.Fprintln(os.Stderr, "caddytest:", err)
		return 1
	}
	return m.Run()
}

// The test Caddy's ports: relayPort serves the relays, adminAddr is its
// admin endpoint. They are free ports picked when the tests start, so that
// two runs of the suite on one machine never load configs into each
// other's Caddy.
var (
	relayPort = freePort()
	httpsPort = freePort()
	adminPort = freePort()
	adminAddr = fmt.Sprintf("localhost:%d", adminPort)
)

func freePort() int {
	port, err := harness.FreePort()
	if err != nil {
		panic("caddytest: no free port: " + err.Error())
	}
	return port
}

// waitTimeout bounds every wait for something the relay does in the
// background. It is generous: the tests wait on events, never on it.
const waitTimeout = 10 * time.Second

// globalOptions is what every config loaded into the shared Caddy starts
// with.
var globalOptions = fmt.Sprintf(`{
	skip_install_trust
	admin %s
	http_port %d
	https_port %d
	grace_period 1s
}
`, adminAddr, relayPort, httpsPort)

// site wraps handler directives in the one site the tests use, with a 404
// for everything no relay matches.
func site(directives string) string {
	return globalOptions + fmt.Sprintf(`
:%d {
%s
	respond 404
}
`, relayPort, directives)
}

// startCaddy loads cfg (a Caddyfile) into the shared Caddy, starting it on
// first use, and fails the test if the config does not become active.
func startCaddy(t *testing.T, cfg string) *caddytester.Tester {
	t.Helper()
	tester := caddytester.NewTester(t).WithDefaultOverrides(caddytester.Config{AdminPort: adminPort})
	tester.InitServer(cfg, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	return tester
}

// reload loads cfg into the running Caddy with the same harness.
func reload(t *testing.T, tester *caddytester.Tester, cfg string) {
	t.Helper()
	tester.InitServer(cfg, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
}

var nameChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// relayName is a relay name of the test's own. Relays outlive configs in
// the process (their queue and dedupe state are kept by name), so every
// test names its relays apart from every other test's.
func relayName(t *testing.T, suffix ...string) string {
	name := nameChars.ReplaceAllString(strings.Join(append([]string{t.Name()}, suffix...), "-"), "-")
	if len(name) > 64 {
		name = name[len(name)-64:]
	}
	return name
}

// relayURL is the address of a relay path on the test Caddy, with query
// (already encoded) when not empty.
func relayURL(path, query string) string {
	u := fmt.Sprintf("http://127.0.0.1:%d%s", relayPort, path)
	if query != "" {
		u += "?" + query
	}
	return u
}

// client sends the webhooks (testkit.Client: no keep-alive).
var client = testkit.Client

// answer is the relay's response to one request: testkit.Reply under the
// field names the tests use.
type answer struct {
	status int
	header http.Header
	body   string
}

func answerOf(r testkit.Reply) answer { return answer{r.Status, r.Header, r.Body} }

// send is testkit.Send.
func send(method, url string, body io.Reader, header ...string) (answer, error) {
	r, err := testkit.Send(method, url, body, header...)
	return answerOf(r), err
}

// post is testkit.Post.
func post(t *testing.T, url string, body []byte, header ...string) answer {
	t.Helper()
	return answerOf(testkit.Post(t, url, body, header...))
}

// mustAccept is testkit.MustAccept.
func mustAccept(t *testing.T, url string, body []byte, header ...string) {
	t.Helper()
	testkit.MustAccept(t, url, body, header...)
}

// expectStatus is testkit.ExpectStatus.
func expectStatus(t *testing.T, a answer, status int, jsonStatus string) {
	t.Helper()
	testkit.ExpectStatus(t, testkit.Reply{Status: a.status, Header: a.header, Body: a.body}, status, jsonStatus)
}

var payloadSeq atomic.Int64

// payload returns a Runware-shaped image result no other payload of the
// test run shares: its key is its own.
func payload(t *testing.T, extra ...string) []byte {
	n := payloadSeq.Add(1)
	fields := []string{
		`"taskType":"imageInference"`,
		fmt.Sprintf(`"taskUUID":"task-%s-%d"`, nameChars.ReplaceAllString(t.Name(), "-"), n),
		fmt.Sprintf(`"imageUUID":"image-%d"`, n),
		`"cost":0.0013`,
	}
	return []byte("{" + strings.Join(append(fields, extra...), ",") + "}")
}

// testdata reads a file under testdata/.
func testdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// js quotes s as a JavaScript string (or a JSON one).
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// indent indents every line of s by two spaces, for failure messages.
func indent(s string) string { return "  " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n  ") }
