package browsertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// waitTimeout bounds every wait for something the relay or the page does
// in the background. It is generous: the tests wait on events, never on it.
const waitTimeout = 10 * time.Second

var (
	caddyBin  string // ../cmd/caddy, built by TestMain
	relayPort int    // where the test's Caddy serves the site
	adminPort int    // its admin endpoint, on 127.0.0.1
)

// TestMain builds the Caddy users build (../cmd/caddy, in the main module)
// once and picks the ports. Each test runs it in a private installation
// (internal/harness: its own HOME and XDG folders, no saved config).
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "browsertest-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "browsertest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if caddyBin, err = harness.BuildCaddyIn("..", dir); err != nil {
		fmt.Fprintln(os.Stderr, "browsertest: building caddy:", err)
		return 1
	}
	for _, p := range []*int{&relayPort, &adminPort} {
		if *p, err = harness.FreePort(); err != nil {
			fmt.Fprintln(os.Stderr, "browsertest:", err)
			return 1
		}
	}
	return m.Run()
}

// site wraps handler directives in the one site the test uses, with a 404
// for everything nothing else matches.
func site(directives string) string {
	return fmt.Sprintf(":%d {\n%s\n\trespond 404\n}\n", relayPort, directives)
}

// startCaddy runs `caddy run` with sites (after the harness's global
// options) and waits until it serves them. It is killed when the test ends,
// and its log shown if the test failed.
func startCaddy(t *testing.T, sites string) {
	t.Helper()
	c := &harness.Caddy{Bin: caddyBin, Home: t.TempDir(), AdminPort: adminPort, GracePeriod: time.Second}
	path := filepath.Join(c.Home, "Caddyfile")
	if err := os.WriteFile(path, []byte(c.Config(sites)), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := harness.Start(c.Command("run", "--config", path, "--adapter", "caddyfile"), filepath.Join(c.Home, "caddy.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("caddy log:\n%s", p.Tail(60))
		}
	})
	if err := c.WaitReady(p, []int{relayPort}, time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, p.Tail(60))
	}
}

var nameChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// relayName is the test's relay name.
func relayName(t *testing.T) string {
	return nameChars.ReplaceAllString(t.Name(), "-")
}

// relayURL is the address of a path on the test's Caddy, with query
// (already encoded) when not empty.
func relayURL(path, query string) string {
	u := fmt.Sprintf("http://127.0.0.1:%d%s", relayPort, path)
	if query != "" {
		u += "?" + query
	}
	return u
}

var payloadSeq atomic.Int64

// payload returns a Runware-shaped image result no other payload of the
// run shares.
func payload(t *testing.T, extra ...string) []byte {
	n := payloadSeq.Add(1)
	fields := []string{
		`"taskType":"imageInference"`,
		fmt.Sprintf(`"taskUUID":"task-%s-%d"`, relayName(t), n),
		fmt.Sprintf(`"imageUUID":"image-%d"`, n),
	}
	return []byte("{" + strings.Join(append(fields, extra...), ",") + "}")
}

// waitDelivered waits until the upstream answered 2xx to body.
func waitDelivered(t *testing.T, u *testkit.Upstream, body []byte) {
	t.Helper()
	u.WaitFor(t, waitTimeout, fmt.Sprintf("a 2xx answer to %.80s", body), func(reqs []*testkit.Request) bool {
		return slices.ContainsFunc(reqs, func(r *testkit.Request) bool {
			return bytes.Equal(r.Body, body) && r.Status/100 == 2
		})
	})
}

// withBody counts the requests whose body is body.
func withBody(reqs []*testkit.Request, body []byte) int {
	n := 0
	for _, r := range reqs {
		if bytes.Equal(r.Body, body) {
			n++
		}
	}
	return n
}

// barrier sends a fresh payload and waits until the upstream took it:
// everything accepted before it has been attempted by then.
func barrier(t *testing.T, u *testkit.Upstream, url string) {
	t.Helper()
	body := payload(t, `"barrier":true`)
	testkit.MustAccept(t, url, body)
	waitDelivered(t, u, body)
}

// adminGet decodes the JSON answer of GET path on the admin API.
func adminGet(t *testing.T, path string, v any) {
	t.Helper()
	a, err := testkit.Send(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", adminPort, path), nil)
	if err != nil || a.Status != http.StatusOK {
		t.Fatalf("GET %s: %v %d %s", path, err, a.Status, a.Body)
	}
	if err := json.Unmarshal([]byte(a.Body), v); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, a.Body)
	}
}

// opsRelayStatus is what the test reads of a relay in GET /webhook_relay/.
type opsRelayStatus struct {
	Name         string `json:"name"`
	Backlog      *int   `json:"backlog"`
	DeadLetters  *int   `json:"dead_letters"`
	Destinations []struct {
		Name   string `json:"name"`
		Paused bool   `json:"paused"`
	} `json:"destinations"`
}

// paused tells whether the relay's destination "upstream" is paused.
func (s *opsRelayStatus) paused() bool {
	for _, d := range s.Destinations {
		if d.Name == "upstream" {
			return d.Paused
		}
	}
	return false
}

// opsOverview is the relay called name in GET /webhook_relay/, or nil.
func opsOverview(t *testing.T, name string) *opsRelayStatus {
	t.Helper()
	var all []opsRelayStatus
	adminGet(t, "/webhook_relay/", &all)
	for i := range all {
		if all[i].Name == name {
			return &all[i]
		}
	}
	return nil
}

// opsWaitOverview polls GET /webhook_relay/ until cond holds for the relay
// called name.
func opsWaitOverview(t *testing.T, name, what string, cond func(s *opsRelayStatus) bool) {
	t.Helper()
	testkit.Eventually(t, waitTimeout, func() bool {
		s := opsOverview(t, name)
		return s != nil && cond(s)
	}, "waiting for %s", what)
}

func intOf(p *int) int {
	if p == nil {
		return -1
	}
	return *p
}

// opsDeadLetter is what the test reads of a dead letter.
type opsDeadLetter struct {
	ID   string  `json:"id"`
	Body *string `json:"body"`
}

// opsListDead is GET /webhook_relay/<name>/dead (query, when set, after ?).
func opsListDead(t *testing.T, name, query string) (page struct{ Entries []opsDeadLetter }) {
	t.Helper()
	path := "/webhook_relay/" + url.PathEscape(name) + "/dead"
	if query != "" {
		path += "?" + query
	}
	adminGet(t, path, &page)
	return page
}

// opsGetDead is GET /webhook_relay/<name>/dead/<id>.
func opsGetDead(t *testing.T, name, id string) (d opsDeadLetter, _ map[string]json.RawMessage) {
	t.Helper()
	adminGet(t, "/webhook_relay/"+url.PathEscape(name)+"/dead/"+url.PathEscape(id), &d)
	return d, nil
}

func ptrString(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// requestKeys are the Idempotency-Keys of the requests whose body is body.
func requestKeys(reqs []*testkit.Request, body []byte) []string {
	var out []string
	for _, r := range reqs {
		if bytes.Equal(r.Body, body) {
			out = append(out, r.Key)
		}
	}
	return out
}
