package bodybuf

import (
	"sync/atomic"
	"syscall"
)

var mappedBytes atomic.Int64

// mapped maps n bytes of private anonymous memory, or returns nil when the
// kernel refuses (then the caller takes the heap).
func mapped(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE)
	if err != nil {
		return nil
	}
	mappedBytes.Add(int64(n))
	return b
}

// unmap unmaps b if it is a mapping of mapped; syscall keeps the list of
// its mappings and refuses any other slice (a buffer of the heap).
func unmap(b []byte) {
	if syscall.Munmap(b) == nil {
		mappedBytes.Add(-int64(len(b)))
	}
}
