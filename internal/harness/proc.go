package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a child process whose stdout and stderr go to a log file: the
// log is what explains a failure after the process is gone, and a file
// never fills up and blocks the child the way an undrained pipe does.
type Proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // cmd.Wait's; set before done is closed
}

// Start starts cmd with its stdout and stderr appended to the file logPath
// (a process restarted on the same log adds to it) and returns at once.
// On Linux the child gets SIGKILL if this process dies first, so a test
// binary that times out or a bench stopped with ^C leaves no Caddy or
// redis-server behind.
func Start(cmd *exec.Cmd, logPath string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %v", strings.Join(cmd.Args, " "), err)
	}
	p := &Proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process's id, for /proc (CPUTime, ReadMemory) and messages.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to timeout for the process to end and reports whether it
// did; Err then says how.
func (p *Proc) Wait(timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Err is the process's exit error once it has ended: nil for status 0, an
// *exec.ExitError for another status or a signal.
func (p *Proc) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Signal sends sig, e.g. SIGTERM for a graceful stop; Wait for the exit.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill sends SIGKILL (kill -9, a crash) and waits for the process to be
// gone. Killing a process that has ended does nothing.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// LogPath is the file holding the process's output.
func (p *Proc) LogPath() string { return p.log }

// Log is what the process wrote so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// Tail is the last n lines of the log, for an error message.
func (p *Proc) Tail(n int) string {
	lines := strings.Split(strings.TrimSpace(p.Log()), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// CPUTime is the user+system CPU time process pid has used so far, from
// /proc/<pid>/stat; 0 for pid 0 or a process that is gone. The bench and
// the large-body test report it per request, Caddy's and redis-server's
// apart: it is steadier than throughput on a shared machine.
func CPUTime(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses: utime
	// and stime are the 12th and 13th, in clock ticks of 10ms.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// Memory is a process's memory from /proc/<pid>/status, in KiB.
type Memory struct {
	RSS   int // VmRSS: Anon + File + Shmem
	Anon  int // RssAnon
	File  int // RssFile: pages of mapped files
	Shmem int // RssShmem
	HWM   int // VmHWM: the highest VmRSS so far
}

// Own is what the process itself allocated: VmRSS without the pages of the
// files it maps (its binary, bbolt's database file), which are page cache
// the kernel reclaims under pressure. The large-body test checks it
// against max_memory.
func (m Memory) Own() int { return m.Anon + m.Shmem }

// ReadMemory reads process pid's memory.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	for line := range strings.SplitSeq(string(b), "\n") {
		name, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int
		switch name {
		case "VmRSS":
			dst = &m.RSS
		case "RssAnon":
			dst = &m.Anon
		case "RssFile":
			dst = &m.File
		case "RssShmem":
			dst = &m.Shmem
		case "VmHWM":
			dst = &m.HWM
		default:
			continue
		}
		*dst, err = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		if err != nil {
			return Memory{}, fmt.Errorf("/proc/%d/status: %s: %v", pid, name, err)
		}
	}
	if m.RSS == 0 {
		return Memory{}, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return m, nil
}
