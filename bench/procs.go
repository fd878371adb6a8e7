package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// freePort finds a free port on 127.0.0.1. Nothing listens on it afterwards,
// which is also how the burst targets get an upstream that refuses.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// moduleRoot is the directory holding this module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module: run from the repository")
	}
	return filepath.Dir(gomod), nil
}

// buildCaddy builds ./cmd/caddy (Caddy + standard modules + webhook_relay).
func buildCaddy(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "caddy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy: %v", err)
	}
	return bin, nil
}

// proc is a child process with its output in a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProc(name, logPath string, env []string, bin string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	// The child dies with us even if we are killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to exit (SIGINT: Caddy shuts down gracefully),
// and kills it after timeout.
func (p *proc) stop(timeout time.Duration) {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(timeout):
		fmt.Fprintf(os.Stderr, "%s did not exit within %s; killing it\n", p.name, timeout)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// startRedis starts a private redis-server on a free port with its own
// directory, and waits until it answers PING. With aof it persists as the
// README asks of a production Redis (appendonly, fsync every second);
// without, it keeps nothing.
func startRedis(dir string, aof bool) (*proc, int, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, 0, errors.New("redis-server not found: install redis-server (apt-get install redis-server), or leave out the redis targets with -targets")
	}
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	rdir := filepath.Join(dir, "redis")
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		return nil, 0, err
	}
	persistence := []string{"--appendonly", "no"}
	if aof {
		persistence = []string{"--appendonly", "yes", "--appendfsync", "everysec"}
	}
	p, err := startProc("redis-server", filepath.Join(dir, "redis.log"), nil, bin,
		append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", rdir,
			"--save", "", "--daemonize", "no", "--protected-mode", "no"}, persistence...)...)
	if err != nil {
		return nil, 0, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && !p.exited() {
		if redisPing(port) {
			return p, port, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.stop(5 * time.Second)
	return nil, 0, fmt.Errorf("redis-server did not answer PING on port %d:\n%s", port, p.tail(10))
}

func redisPing(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// caddyEnv keeps Caddy's data and config directories inside the run's
// temporary directory.
func caddyEnv(dir string) []string {
	return []string{
		"XDG_DATA_HOME=" + filepath.Join(dir, "xdg-data"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "xdg-config"),
	}
}

// validateCaddyfile runs `caddy validate` (adapt + provision) on a
// Caddyfile and returns its complaint, if any.
func validateCaddyfile(bin, dir, path string) error {
	cmd := exec.Command(bin, "validate", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), caddyEnv(dir)...)
	out, err := cmd.CombinedOutput()
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
func startCaddy(bin, dir, path string, adminPort int, ports []int) (*proc, error) {
	p, err := startProc("caddy", filepath.Join(dir, "caddy.log"), caddyEnv(dir), bin,
		"run", "--config", path, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) && !p.exited() {
		resp, err := client.Get(fmt.Sprintf("http://localhost:%d/config/", adminPort))
		if err == nil {
			resp.Body.Close()
			if allListening(ports) {
				return p, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.stop(10 * time.Second)
	return nil, fmt.Errorf("caddy did not come up (log %s):\n%s", p.log, p.tail(15))
}

func allListening(ports []int) bool {
	for _, port := range ports {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

func commandOutput(bin string, args ...string) string {
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// cpuTime is the user+system CPU time a process used so far, from
// /proc/<pid>/stat (in clock ticks of 1/100 s on Linux).
func (p *proc) cpuTime() time.Duration {
	if p == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
