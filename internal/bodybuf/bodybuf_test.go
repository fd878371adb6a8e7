package bodybuf

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// rssAnon is this process's anonymous resident memory, in bytes.
func rssAnon(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		testkit.Unavailable(t, "no /proc/self/status: %v", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	testkit.Unavailable(t, "no RssAnon in /proc/self/status")
	return 0
}

// A large buffer is outside the heap: written, it is resident; freed, it
// leaves the process at once, without a collection.
func TestLargeLeavesAtFree(t *testing.T) {
	if runtime.GOOS != "linux" {
		testkit.Unavailable(t, "mapped buffers are Linux only")
	}
	const n = 64 << 20
	before := rssAnon(t)
	b := Alloc(n)
	if len(b) != n || cap(b) != n {
		t.Fatalf("Alloc(%d): len %d cap %d", n, len(b), cap(b))
	}
	if Mapped() < n {
		t.Fatalf("Mapped() = %d after Alloc(%d)", Mapped(), n)
	}
	if got := rssAnon(t) - before; got > 8<<20 {
		t.Errorf("an untouched %d MiB buffer made RssAnon grow by %d MiB", n>>20, got>>20)
	}
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	written := rssAnon(t)
	if written-before < n-8<<20 {
		t.Fatalf("writing %d MiB made RssAnon grow by only %d MiB: not resident?", n>>20, (written-before)>>20)
	}
	Free(b[:10]) // a shorter slice of it frees the whole mapping
	if got := written - rssAnon(t); got < n-8<<20 {
		t.Errorf("Free gave back %d MiB of %d", got>>20, n>>20)
	}
	if Mapped() != 0 {
		t.Errorf("Mapped() = %d after Free", Mapped())
	}
}

func TestSmallOnHeap(t *testing.T) {
	b := Alloc(300)
	if len(b) != 300 {
		t.Fatalf("len %d", len(b))
	}
	if Mapped() != 0 {
		t.Errorf("a 300-byte buffer was mapped")
	}
	Free(b)                         // nothing to do
	Free(make([]byte, Threshold*2)) // a heap slice: left alone
	Free(nil)
}
