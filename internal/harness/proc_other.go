//go:build !linux

package harness

import "syscall"

// dieWithParent is Linux's only (Pdeathsig): elsewhere a child outlives a
// killed parent. The package still builds there, and so do redistest and
// the Redis tests.
func dieWithParent() *syscall.SysProcAttr { return nil }
