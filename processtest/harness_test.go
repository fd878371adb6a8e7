// Package processtest runs the built Caddy binary (cmd/caddy, with
// webhook_relay in it) as a separate process, to test what only a real
// process shows: kill -9, graceful stop, a second process on the same files,
// `caddy validate` next to a running instance.
//
// The processes themselves are internal/harness's (the bench runs the same
// ones) and Redis is internal/redistest's; this file puts them in test
// terms, failing the test instead of returning errors:
//
//   - TestMain builds the binary once per `go test` run (caddyBinary).
//   - NewInstance gives one Caddy "installation" (a harness.Caddy): its own
//     HOME and XDG directories (so caddy.AppDataDir() is private to it), its
//     own free HTTP and admin ports. Instances that should share data (a
//     restart, a second process on the same files) share an Instance, or
//     its Home.
//   - Instance.Start writes the Caddyfile (global options for the admin
//     port, no HTTPS, grace_period added by the harness) and runs
//     `caddy run`, waiting until both the admin endpoint and the HTTP port
//     answer. Process.Kill is SIGKILL, Process.Stop is SIGTERM and waits.
//     Each process's output goes to a file that is printed if the test fails.
//   - NewUpstream is internal/testkit's recording upstream on 127.0.0.1,
//     stopped and started again on the same port, answering a chosen status
//     after a chosen delay and counting deliveries by Idempotency-Key.
//
// Nothing here sleeps for correctness: waits poll with deadlines
// (testkit.Eventually).
package processtest

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// caddyBinary is the path of the Caddy built by TestMain.
var caddyBinary string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "processtest-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "processtest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if caddyBinary, err = harness.BuildCaddy(dir); err != nil {
		fmt.Fprintln(os.Stderr, "processtest: building caddy:", err)
		return 1
	}
	return m.Run()
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	return port
}

// Instance is one Caddy installation: a private home and data directory
// and a pair of ports. Start it, stop or kill it, start it again: the data
// directory stays. Home, AdminPort, GracePeriod (default 2s) and DataDir
// are harness.Caddy's.
type Instance struct {
	harness.Caddy
	t        testing.TB
	HTTPPort int

	runs atomic.Int32
}

// NewInstance makes an instance with fresh directories and free ports.
func NewInstance(t testing.TB) *Instance {
	return &Instance{
		Caddy: harness.Caddy{
			Bin:         caddyBinary,
			Home:        t.TempDir(),
			AdminPort:   FreePort(t),
			GracePeriod: 2 * time.Second,
		},
		t:        t,
		HTTPPort: FreePort(t),
	}
}

// URL is the instance's HTTP address plus path.
func (in *Instance) URL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", in.HTTPPort, path)
}

// WriteCaddyfile writes the global options the harness needs followed by
// sites, and returns the file's path. Sites use {http_port} for the
// instance's HTTP port.
func (in *Instance) WriteCaddyfile(sites string) string {
	in.t.Helper()
	n := in.runs.Add(1)
	cfg := in.Config(strings.ReplaceAll(sites, "{http_port}", fmt.Sprint(in.HTTPPort)))
	path := filepath.Join(in.Home, fmt.Sprintf("Caddyfile.%d", n))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		in.t.Fatal(err)
	}
	return path
}

// Process is one running `caddy run` (or another caddy command): a
// harness.Proc (Pid, Exited, Kill, Log, Tail) whose waits fail the test.
type Process struct {
	*harness.Proc
	t  testing.TB
	in *Instance
}

// Start runs `caddy run` with sites (see WriteCaddyfile) and waits until it
// answers on its admin and HTTP ports. The process is killed when the test
// ends, and its log printed if the test failed.
func (in *Instance) Start(sites string) *Process {
	in.t.Helper()
	p := in.Spawn("run", "--config", in.WriteCaddyfile(sites), "--adapter", "caddyfile")
	p.WaitReady(30 * time.Second)
	return p
}

// Spawn runs the caddy binary with args in the instance's environment and
// returns at once.
func (in *Instance) Spawn(args ...string) *Process {
	in.t.Helper()
	t := in.t
	logPath := filepath.Join(in.Home, fmt.Sprintf("caddy-%d-%s.log", in.runs.Add(1), args[0]))
	hp, err := harness.Start(in.Command(args...), logPath)
	if err != nil {
		t.Fatal(err)
	}
	p := &Process{Proc: hp, t: t, in: in}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("caddy %s, pid %d, log %s:\n%s", strings.Join(args, " "), p.Pid(), logPath, p.Log())
		}
	})
	return p
}

// Wait waits up to timeout for the process to exit and returns its exit
// error (nil for status 0); it fails the test on timeout.
func (p *Process) Wait(timeout time.Duration) error {
	p.t.Helper()
	if !p.Proc.Wait(timeout) {
		p.t.Fatalf("caddy (pid %d) still running after %s", p.Pid(), timeout)
	}
	return p.Err()
}

// WaitReady waits until the admin endpoint answers /config/ and the HTTP
// port accepts connections, failing early if the process exits.
func (p *Process) WaitReady(timeout time.Duration) {
	p.t.Helper()
	if err := p.in.WaitReady(p.Proc, []int{p.in.HTTPPort}, timeout); err != nil {
		p.t.Fatalf("%v:\n%s", err, p.Log())
	}
}

// Stop sends SIGTERM (a graceful stop), waits up to timeout for the exit
// and returns how long it took.
func (p *Process) Stop(timeout time.Duration) time.Duration {
	p.t.Helper()
	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil && !p.Exited() {
		p.t.Fatalf("SIGTERM: %v", err)
	}
	if err := p.Wait(timeout); err != nil {
		p.t.Logf("caddy exited after SIGTERM with %v", err)
	}
	return time.Since(start)
}

// Post sends body to url and returns the status and response body; a
// transport error fails the test.
func Post(t testing.TB, url, body string) (int, string) {
	t.Helper()
	r := postResp(url, body)
	if r.Err != nil {
		t.Fatalf("POST %s: %v", url, r.Err)
	}
	return r.Status, r.Body
}

// response is one answer of the relay.
type response struct {
	Status     int
	Body       string
	RetryAfter string
	Took       time.Duration
	Err        error // transport error; Status is 0
}

// postResp posts body like Post but returns transport errors and the
// Retry-After header instead of failing the test.
func postResp(url, body string) response {
	start := time.Now()
	resp, err := httpClient.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return response{Err: err, Took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{
		Status:     resp.StatusCode,
		Body:       strings.TrimSpace(string(b)),
		RetryAfter: resp.Header.Get("Retry-After"),
		Took:       time.Since(start),
	}
}

func (r response) String() string {
	if r.Err != nil {
		return fmt.Sprintf("error %v after %s", r.Err, r.Took)
	}
	return fmt.Sprintf("%d %q (Retry-After %q) in %s", r.Status, r.Body, r.RetryAfter, r.Took)
}

func (r response) accepted() bool {
	return r.Status == http.StatusOK && r.Body == `{"status":"accepted"}`
}

func (r response) duplicate() bool {
	return r.Status == http.StatusOK && r.Body == `{"status":"duplicate"}`
}

var httpClient = &http.Client{Timeout: 15 * time.Second}

// portServer is a testkit.Server on a free port of 127.0.0.1 whose URL
// takes a path: an upstream with a handler of its own, stopped and started
// again on the same port.
type portServer struct {
	*testkit.Server
}

// newPortServer makes a server of h on a free port, not yet started.
func newPortServer(t testing.TB, h http.HandlerFunc) portServer {
	s := testkit.NewServer(t, "127.0.0.1:0", h)
	s.Stop()
	return portServer{s}
}

// URL is the server's address plus path.
func (p portServer) URL(path string) string { return p.Server.URL + path }

// Upstream is a recording webhook receiver on 127.0.0.1 (a testkit
// upstream) that can be stopped and started again on the same port.
type Upstream struct {
	*testkit.Upstream

	status atomic.Int32 // status to answer
	delay  atomic.Int64 // how long to take before answering
}

// NewUpstream makes an upstream on a free port, not yet started. It
// answers 200 at once until told otherwise.
func NewUpstream(t testing.TB) *Upstream {
	u := &Upstream{}
	u.status.Store(http.StatusOK)
	u.Upstream = testkit.NewUpstream(t, func(*testkit.Request) testkit.Answer {
		return testkit.Answer{Status: int(u.status.Load()), Delay: time.Duration(u.delay.Load())}
	})
	u.Stop()
	return u
}

// URL is the upstream's address plus path.
func (u *Upstream) URL(path string) string { return u.Upstream.URL + path }

// Answer sets the status the upstream answers with.
func (u *Upstream) Answer(status int) { u.status.Store(int32(status)) }

// Delay makes every answer take d.
func (u *Upstream) Delay(d time.Duration) { u.delay.Store(int64(d)) }

// Delivered returns how many times each Idempotency-Key was answered 2xx.
func (u *Upstream) Delivered() map[string]int {
	delivered := make(map[string]int)
	for _, r := range u.Requests() {
		if r.Status/100 == 2 {
			delivered[r.Key]++
		}
	}
	return delivered
}

// Attempts returns how many requests reached the upstream, and how many are
// being answered right now.
func (u *Upstream) Attempts() (total, inFlight int) {
	return len(u.Requests()), u.InFlight()
}

// errExit reports whether err is a process exit with a non-zero status.
func errExit(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && !ee.Success()
}
