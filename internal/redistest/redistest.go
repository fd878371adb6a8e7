// Package redistest runs a real, private redis-server for a test: on a free
// 127.0.0.1 port, with its own data directory, never the machine's Redis.
// The bench runs its Redis with it too (StartDir).
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
)

// Options choose how the server persists.
type Options struct {
	// AOF turns on the append-only file, by default with an fsync per
	// write (appendonly yes, appendfsync always), so a SIGKILL loses
	// nothing that was acknowledged.
	AOF bool
	// Appendfsync is the AOF's fsync policy instead of always: "everysec"
	// is what the README recommends in production and what the bench
	// measures, "no" leaves it to the kernel.
	Appendfsync string
}

// Server is one redis-server process owned by a test (or the bench).
type Server struct {
	t    testing.TB // nil for StartDir
	opts Options
	port int
	dir  string

	mu   sync.Mutex
	proc *harness.Proc // nil while killed
}

// Start starts a redis-server and waits until it answers PING. The server is
// killed when t ends. Without redis-server on PATH the test fails: Redis
// behaviour is never skipped.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not found: install it with `apt-get install redis-server`")
	}
	s := &Server{t: t, opts: opts, dir: t.TempDir()}
	t.Cleanup(s.Kill)
	if err := s.startFree(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	return s
}

// StartDir is Start for a program that is no test (the bench): the server
// keeps its data and log in dir, an error is returned rather than failing a
// test, and the caller stops the server with Kill. Restart is for tests.
func StartDir(dir string, opts Options) (*Server, error) {
	s := &Server{opts: opts, dir: dir}
	if err := s.startFree(); err != nil {
		return nil, fmt.Errorf("starting redis-server: %v", err)
	}
	return s, nil
}

// startFree starts the server on a free port.
func (s *Server) startFree() error {
	var err error
	for range 5 { // the free port may be taken between probing and binding
		if s.port, err = harness.FreePort(); err != nil {
			return fmt.Errorf("finding a free port: %v", err)
		}
		if err = s.start(); err == nil {
			return nil
		}
	}
	return err
}

func (s *Server) start() error {
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--daemonize", "no",
		"--protected-mode", "no",
		"--maxmemory-policy", "noeviction",
	}
	if s.opts.AOF {
		fsync := s.opts.Appendfsync
		if fsync == "" {
			fsync = "always"
		}
		args = append(args, "--appendonly", "yes", "--appendfsync", fsync)
	} else {
		args = append(args, "--appendonly", "no")
	}
	p, err := harness.Start(exec.Command("redis-server", args...), filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("redis-server exited at start; log:\n%s", p.Tail(40))
		}
		if ping(s.Addr()) == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Kill()
	return fmt.Errorf("redis-server on %s did not answer PING within 10s; log:\n%s", s.Addr(), p.Tail(40))
}

// ping sends PING and expects +PONG; a server still loading its AOF answers
// -LOADING, which is not ready.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL is a redis:// URL for the server, database 0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Dir is the server's data directory.
func (s *Server) Dir() string { return s.dir }

// Pid is the server's process id, 0 while it is not running: to read its
// CPU time and memory from /proc, or to SIGSTOP it as a hung Redis would
// be.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.Pid()
}

// Kill kills the server with SIGKILL, as a crash would, and waits for it to
// be gone. Killing a server that is not running does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.Kill()
		s.proc = nil
	}
}

// Restart starts the server again on the same port with the same data
// directory, killing it first if it still runs, and waits for PING.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	var err error
	for range 50 { // the port can linger briefly after a kill
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restarting redis-server on %s: %v", s.Addr(), err)
}
