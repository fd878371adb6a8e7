// Package bodybuf holds large webhook bodies outside the memory Go's
// garbage collector manages.
//
// A body on Go's heap stays in the process's memory after the relay is
// done with it, until a collection finds it unreachable, and the collector
// lets the heap grow to twice what is live before it starts one: with
// bodies of megabytes, the memory the relay took was max_memory and about
// as much again. A large body here is a private anonymous mapping of its
// own, given back to the kernel the moment Free is called, so what the
// process holds follows what the memory budget counts, whatever the
// collector is doing. Small bodies (below Threshold) stay on the heap:
// a mapping costs two system calls, which a 300-byte webhook must not pay.
//
// Whoever calls Free must be the last user of the bytes: a mapping is
// gone after Free, and touching it then crashes the process.
package bodybuf

// Threshold is the size from which a buffer is mapped rather than made on
// the heap. A page of bookkeeping per mapping is then under 7% of it.
const Threshold = 64 << 10

// Alloc returns a zeroed buffer of length and capacity n: mapped outside
// the heap when n is at least Threshold (and the system allows it), made
// on the heap otherwise. Pages of a mapping take memory only once written,
// so a large buffer being filled slowly holds only what has arrived.
func Alloc(n int) []byte {
	if n >= Threshold {
		if b := mapped(n); b != nil {
			return b
		}
	}
	return make([]byte, n)
}

// Free gives b's memory back at once if Alloc mapped it, whatever b's
// length (its capacity is the mapping's); a buffer from the heap is left
// to the collector. b must not be used afterwards.
func Free(b []byte) {
	if cap(b) >= Threshold {
		unmap(b[:cap(b)])
	}
}

// Mapped reports the bytes of the buffers mapped now (for tests and the
// report).
func Mapped() int64 { return mappedBytes.Load() }
