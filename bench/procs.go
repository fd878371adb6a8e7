package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
)

// The bench's child processes are internal/harness's (Caddy) and
// internal/redistest's (redis-server), the same the process tests run.

// startRedis starts a private redis-server on a free port with its own
// directory, and waits until it answers PING. With aof it persists as
// docs/redis.md asks of a production Redis (appendonly, fsync every
// second); without, it keeps nothing.
func startRedis(dir string, aof bool) (*redistest.Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, errors.New("redis-server not found: install redis-server (apt-get install redis-server), or leave out the redis targets with -targets")
	}
	rdir := filepath.Join(dir, "redis")
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		return nil, err
	}
	return redistest.StartDir(rdir, redistest.Options{AOF: aof, Appendfsync: "everysec"})
}

// validateCaddyfile runs `caddy validate` (adapt + provision) on a
// Caddyfile and returns its complaint, if any.
func validateCaddyfile(c *harness.Caddy, path string) error {
	out, err := c.Command("validate", "--config", path, "--adapter", "caddyfile").CombinedOutput()
	if err == nil {
		return nil
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, l := range lines {
		if strings.HasPrefix(l, "panic: ") {
			return errors.New(l)
		}
	}
	// Otherwise the last line carries Caddy's error, as a JSON log entry.
	last := lines[len(lines)-1]
	var entry struct{ Msg, Error string }
	if json.Unmarshal([]byte(last), &entry) == nil && entry.Msg != "" {
		return errors.New(strings.TrimSpace(entry.Msg + " " + entry.Error))
	}
	return errors.New(last)
}

// startCaddy runs Caddy on a Caddyfile and waits until the admin endpoint
// and every site port answer.
func startCaddy(c *harness.Caddy, path string, ports []int) (*harness.Proc, error) {
	p, err := harness.Start(c.Command("run", "--config", path, "--adapter", "caddyfile"), filepath.Join(c.Home, "caddy.log"))
	if err != nil {
		return nil, err
	}
	if err := c.WaitReady(p, ports, 30*time.Second); err != nil {
		stopCaddy(p, 10*time.Second)
		return nil, fmt.Errorf("caddy did not come up: %v (log %s):\n%s", err, p.LogPath(), p.Tail(15))
	}
	return p, nil
}

// stopCaddy asks Caddy to exit (SIGINT: it shuts down gracefully), and
// kills it after timeout.
func stopCaddy(p *harness.Proc, timeout time.Duration) {
	if p == nil || p.Exited() {
		return
	}
	_ = p.Signal(os.Interrupt)
	if !p.Wait(timeout) {
		fmt.Fprintf(os.Stderr, "caddy did not exit within %s; killing it\n", timeout)
		p.Kill()
	}
}

func commandOutput(bin string, args ...string) string {
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// on is c running bin instead, when bin is given (a -before target).
func on(c *harness.Caddy, bin string) *harness.Caddy {
	if bin == "" {
		return c
	}
	other := *c
	other.Bin = bin
	return &other
}
