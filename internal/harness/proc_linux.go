package harness

import "syscall"

// dieWithParent has the kernel send the child SIGKILL when the thread that
// started it ends. Go keeps its threads until the process ends, unless a
// goroutine locked to one exits, which nothing in the tests or the bench
// does.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
