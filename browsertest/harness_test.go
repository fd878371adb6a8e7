package browsertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
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

var client = &http.Client{Timeout: waitTimeout}

// answer is one response, read whole.
type answer struct {
	status int
	header http.Header
	body   string
}

// send makes one request and reads the whole answer. header holds
// "Name: value" pairs.
func send(method, url string, body io.Reader, header ...string) (answer, error) {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return answer{}, err
	}
	for _, h := range header {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	if req.Header.Get("Content-Type") == "" && body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}, nil
}

// post sends body to the relay and fails the test if no answer comes.
func post(t *testing.T, url string, body []byte, header ...string) answer {
	t.Helper()
	a, err := send(http.MethodPost, url, bytes.NewReader(body), header...)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return a
}

// mustAccept posts body and fails the test unless the relay accepts it.
func mustAccept(t *testing.T, url string, body []byte, header ...string) {
	t.Helper()
	expectStatus(t, post(t, url, body, header...), http.StatusOK, "accepted")
}

// expectStatus checks the status and, when jsonStatus is set, the JSON
// status field.
func expectStatus(t *testing.T, a answer, status int, jsonStatus string) {
	t.Helper()
	if a.status != status {
		t.Fatalf("status %d, want %d (body %q)", a.status, status, a.body)
	}
	if want := fmt.Sprintf(`{"status":%q}`, jsonStatus); jsonStatus != "" && strings.TrimSpace(a.body) != want {
		t.Fatalf("body %q, want %s", a.body, want)
	}
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

// hit is one request the upstream received, and its answer.
type hit struct {
	Body   []byte
	Status int
}

// upstream is the application behind the relay, on 127.0.0.1, answering
// what respond says and recording every request.
type upstream struct {
	URL  string // http://127.0.0.1:<port>
	Addr string // 127.0.0.1:<port>

	mu   sync.Mutex
	hits []hit
}

func newUpstream(t *testing.T, respond func(body []byte) int) *upstream {
	u := &upstream{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		status := respond(body)
		u.mu.Lock()
		u.hits = append(u.hits, hit{Body: body, Status: status})
		u.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	u.URL, u.Addr = srv.URL, srv.Listener.Addr().String()
	return u
}

// all returns what the upstream received so far.
func (u *upstream) all() []hit {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.hits)
}

// waitDelivered waits until the upstream answered 2xx to body.
func (u *upstream) waitDelivered(t *testing.T, body []byte) {
	t.Helper()
	eventually(t, fmt.Sprintf("a 2xx answer to %.80s", body), func() bool {
		return slices.ContainsFunc(withBody(u.all(), body), func(h hit) bool { return h.Status/100 == 2 })
	})
}

// withBody keeps the requests whose body is body.
func withBody(hits []hit, body []byte) []hit {
	return slices.DeleteFunc(hits, func(h hit) bool { return !bytes.Equal(h.Body, body) })
}

// barrier sends a fresh payload and waits until the upstream took it:
// everything accepted before it has been attempted by then.
func barrier(t *testing.T, u *upstream, url string) {
	t.Helper()
	body := payload(t, `"barrier":true`)
	mustAccept(t, url, body)
	u.waitDelivered(t, body)
}

// eventually polls cond until it holds, failing the test after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// adminGet decodes the JSON answer of GET path on the admin API.
func adminGet(t *testing.T, path string, v any) {
	t.Helper()
	a, err := send(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", adminPort, path), nil)
	if err != nil || a.status != http.StatusOK {
		t.Fatalf("GET %s: %v %d %s", path, err, a.status, a.body)
	}
	if err := json.Unmarshal([]byte(a.body), v); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, a.body)
	}
}

// opsRelayStatus is what the test reads of a relay in GET /webhook_relay/.
type opsRelayStatus struct {
	Name        string `json:"name"`
	Backlog     *int   `json:"backlog"`
	DeadLetters *int   `json:"dead_letters"`
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
	eventually(t, what, func() bool {
		s := opsOverview(t, name)
		return s != nil && cond(s)
	})
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
