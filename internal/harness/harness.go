// Package harness runs the processes that the process tests (processtest),
// the Redis tests (through internal/redistest) and the bench (go run ./bench)
// need: this module's Caddy, built once, in a private installation, and
// child processes whose output goes to a log file. It lives here, not in a
// _test.go file, because a test harness cannot be imported and the bench is
// no test.
//
// Nothing here knows about testing.TB: errors are returned, and each caller
// fails its test or its run in its own words.
package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Nothing listens on it afterwards, so another process may take it before
// the caller binds it: a caller that can tell (redistest) tries another.
// An unused one is also a dependable dead upstream: connections are refused.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// listening reports whether every port in ports on 127.0.0.1 accepts a
// connection.
func listening(ports []int) bool {
	for _, port := range ports {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

// BuildCaddy builds ./cmd/caddy (Caddy, its standard modules and
// webhook_relay) into dir and returns the binary's path. The tests and the
// bench run the binary users build, not the code in-process. It finds the
// module with `go env GOMOD`, so it works from any directory inside the
// module: a test's package directory, or wherever `go run ./bench` was
// started. The compiler's output goes to this process's stderr.
func BuildCaddy(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module: run from the repository")
	}
	return BuildCaddyIn(filepath.Dir(gomod), dir)
}

// BuildCaddyIn is BuildCaddy for the module in root, e.g. ".." from the
// browser tests' module (browsertest/), which is a module of its own.
func BuildCaddyIn(root, dir string) (string, error) {
	bin, err := filepath.Abs(filepath.Join(dir, "caddy"))
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy: %v", err)
	}
	return bin, nil
}
