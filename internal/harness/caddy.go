package harness

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Caddy is one installation of the built Caddy: a private home, so that
// caddy.AppDataDir() (where the bolt store keeps its files) and Caddy's
// config directory are its own and never the user's, and an admin port.
// Processes started again on the same installation find its data again:
// a restart, or a second process on the same files.
type Caddy struct {
	Bin  string // the binary, from BuildCaddy
	Home string // HOME; XDG_DATA_HOME is Home/data, XDG_CONFIG_HOME Home/config, XDG_CACHE_HOME Home/cache
	// AdminPort is where the admin endpoint listens, on 127.0.0.1.
	AdminPort int
	// GracePeriod is Caddy's grace_period global option: how long the HTTP
	// servers wait for running requests at shutdown.
	GracePeriod time.Duration
}

// DataDir is what caddy.AppDataDir() is in the installation's processes.
func (c *Caddy) DataDir() string { return filepath.Join(c.Home, "data", "caddy") }

// Config is a Caddyfile: the global options every run needs (the admin
// port, no automatic HTTPS, no saved config, the grace period) followed by
// sites.
func (c *Caddy) Config(sites string) string {
	return fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tgrace_period %s\n}\n\n%s\n",
		c.AdminPort, c.GracePeriod, sites)
}

// Command is the binary with args, to run in the installation: in Home,
// with the host's environment but HOME and the XDG directories moved into
// it. Start it with Start, or run it to the end (`caddy validate`).
func (c *Caddy) Command(args ...string) *exec.Cmd {
	cmd := exec.Command(c.Bin, args...)
	cmd.Dir = c.Home
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME":
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env,
		"HOME="+c.Home,
		"XDG_DATA_HOME="+filepath.Join(c.Home, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(c.Home, "config"),
		"XDG_CACHE_HOME="+filepath.Join(c.Home, "cache"),
	)
	return cmd
}

// WaitReady waits until p, a `caddy run` of this installation, is ready:
// its admin endpoint answers /config/ and every port in ports (its sites)
// accepts connections. Caddy loads its config before it listens, so a test
// or a measurement that started earlier would meet refused connections. It
// fails early if p exits; the error does not carry the log (p.Log does).
func (c *Caddy) WaitReady(p *Proc, ports []int, timeout time.Duration) error {
	admin := fmt.Sprintf("http://127.0.0.1:%d/config/", c.AdminPort)
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		if p.Exited() {
			return fmt.Errorf("caddy exited before it was ready (%v)", p.Err())
		}
		if resp, err := client.Get(admin); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && listening(ports) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("caddy not ready after %s", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
