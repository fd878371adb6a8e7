// Package redistest runs a real, private redis-server for a test: on a free
// 127.0.0.1 port, with its own data directory, never the machine's Redis.
// The bench runs its Redis with it too (StartDir).
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
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
	// is what docs/redis.md recommends in production and what the bench
	// measures, "no" leaves it to the kernel.
	Appendfsync string
	// ReplicaOf makes the server a replica of that one (replicaof).
	ReplicaOf *Server
	// Cluster makes it a Cluster node (cluster-enabled yes, its own
	// nodes.conf, a short node timeout for quick failovers).
	Cluster bool
}

// Server is one redis-server process owned by a test (or the bench).
type Server struct {
	t    testing.TB // nil for StartDir
	opts Options
	port int
	dir  string

	mu   sync.Mutex
	proc *harness.Proc // nil while killed

	sentinel *sentinelConf // set for a sentinel
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
	if s.sentinel != nil {
		return s.startSentinel()
	}
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
	if s.opts.ReplicaOf != nil {
		args = append(args, "--replicaof", "127.0.0.1", strconv.Itoa(s.opts.ReplicaOf.port))
	}
	if s.opts.Cluster {
		// A replica whose link to its master looked stale (a loaded test
		// machine) would refuse to take over and the failover never
		// comes; validity factor 0 makes every replica eligible.
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000", "--cluster-replica-validity-factor", "0")
	}
	p, err := harness.Start(exec.Command("redis-server", args...), filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return s.waitPing(p)
}

// waitPing waits until the server p answers PING.
func (s *Server) waitPing(p *harness.Proc) error {
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

// Info returns a section of the server's INFO, as redis-cli prints it.
func (s *Server) Info(section string) (string, error) {
	return Cmd(s.Addr(), "INFO", section)
}

// Cmd runs a command on the server at addr through redis-cli and returns its
// output.
func Cmd(addr string, args ...string) (string, error) {
	if _, err := exec.LookPath("redis-cli"); err != nil {
		return "", fmt.Errorf("redis-cli not found: install it with `apt-get install redis-tools`")
	}
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("redis-cli %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// WaitSynced waits until the replica's link to its master is up and it has
// caught up, so that it holds what the master held when WaitSynced was
// called (as far as the initial sync goes).
func (s *Server) WaitSynced(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var info string
	for time.Now().Before(deadline) {
		info, _ = s.Info("replication")
		if strings.Contains(info, "master_link_status:up") && strings.Contains(info, "master_sync_in_progress:0") {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("replica %s not in sync with its master after %s:\n%s", s.Addr(), timeout, info)
}

// StartSentinel starts a sentinel (redis-server --sentinel) watching master
// under name with the given quorum, with short timeouts so that a failover
// takes a few seconds: down-after 1s, failover-timeout 5s. It is killed
// when t ends.
func StartSentinel(t testing.TB, name string, master *Server, quorum int) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not found: install it with `apt-get install redis-server` (it runs sentinels too)")
	}
	s := &Server{t: t, dir: t.TempDir(), sentinel: &sentinelConf{name: name, master: master.Addr(), quorum: quorum}}
	t.Cleanup(s.Kill)
	if err := s.startFree(); err != nil {
		t.Fatalf("starting a sentinel: %v", err)
	}
	return s
}

// sentinelConf is what a sentinel watches.
type sentinelConf struct {
	name, master string
	quorum       int
}

func (s *Server) startSentinel() error {
	host, port, _ := net.SplitHostPort(s.sentinel.master)
	conf := fmt.Sprintf("port %d\nbind 127.0.0.1\nprotected-mode no\ndir %s\n"+
		"sentinel monitor %s %s %s %d\n"+
		"sentinel down-after-milliseconds %s 1000\n"+
		"sentinel failover-timeout %s 5000\n"+
		"sentinel parallel-syncs %s 1\n",
		s.port, s.dir, s.sentinel.name, host, port, s.sentinel.quorum, s.sentinel.name, s.sentinel.name, s.sentinel.name)
	path := filepath.Join(s.dir, "sentinel.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return err
	}
	p, err := harness.Start(exec.Command("redis-server", path, "--sentinel"), filepath.Join(s.dir, "sentinel.log"))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return s.waitPing(p)
}

// MasterAddr asks a sentinel for the current master's address.
func (s *Server) MasterAddr() (string, error) {
	out, err := Cmd(s.Addr(), "SENTINEL", "get-master-addr-by-name", s.sentinel.name)
	if err != nil {
		return "", err
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return "", fmt.Errorf("sentinel answered %q", out)
	}
	return net.JoinHostPort(f[0], f[1]), nil
}

// CreateCluster makes a Cluster of the nodes (started with Options.Cluster)
// with redis-cli --cluster create, replicas replicas per master, and waits
// until every node reports cluster_state:ok.
func CreateCluster(t testing.TB, replicas int, nodes ...*Server) {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatal("redis-cli not found: install it with `apt-get install redis-tools`")
	}
	args := []string{"--cluster", "create"}
	for _, n := range nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		for {
			out, _ := Cmd(n.Addr(), "CLUSTER", "INFO")
			if strings.Contains(out, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s not ok after 30s: %s", n.Addr(), out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
