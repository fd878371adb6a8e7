//go:build linux

// Command fsync measures what a bbolt commit costs the disk, without
// bbolt: each "commit" writes some 4 KiB pages into a pre-written file,
// syncs (fdatasync), writes one more page (bbolt's meta page) and syncs
// again, as bbolt's Tx.Commit does. It reports the time and the CPU (user
// and system, the kernel's work for the writes and syncs) per commit.
//
//	go run ./bench/fsync                    # 1, 6, 18 and 34 pages per commit, one file
//	go run ./bench/fsync -files 1,2,4       # several files committing in parallel
//
// docs/performance.md ("Where the time goes") explains what the numbers
// mean for the bolt store.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const pageSize = 4096

func main() {
	dir := flag.String("dir", os.TempDir(), "directory for the test files (put it on the disk the store uses)")
	pagesFlag := flag.String("pages", "1,6,18,34", "data pages per commit, a count or counts separated by commas")
	filesFlag := flag.String("files", "1", "files committing in parallel, a count or counts separated by commas")
	commits := flag.Int("commits", 800, "commits per file and run")
	flag.Parse()
	pages, err := counts(*pagesFlag)
	if err != nil {
		fail(err)
	}
	files, err := counts(*filesFlag)
	if err != nil {
		fail(err)
	}
	for _, f := range files {
		for _, p := range pages {
			elapsed, cpu, err := run(*dir, f, p, *commits)
			if err != nil {
				fail(err)
			}
			total := f * *commits
			fmt.Printf("files %d  pages %2d: %4.0f commits/s in all, %.2f ms per commit, %3.0f µs CPU per commit\n",
				f, p, float64(total)/elapsed.Seconds(), elapsed.Seconds()*1000/float64(*commits),
				float64(cpu.Microseconds())/float64(total))
		}
	}
}

func counts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad count %q: want a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// run commits in files files at once and returns the wall time and the
// process's CPU time over all of them.
func run(dir string, files, pages, commits int) (time.Duration, time.Duration, error) {
	size := int64(commits*pages+1) * pageSize
	fhs := make([]*os.File, files)
	for i := range fhs {
		fh, err := prepare(filepath.Join(dir, fmt.Sprintf("fsync-bench-%d-%d.db", os.Getpid(), i)), size)
		if err != nil {
			return 0, 0, err
		}
		defer os.Remove(fh.Name())
		defer fh.Close()
		fhs[i] = fh
	}
	errs := make(chan error, files)
	var wg sync.WaitGroup
	cpu0, start := cpuTime(), time.Now()
	for _, fh := range fhs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- commitAll(fh, pages, commits)
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, 0, err
		}
	}
	return elapsed, cpu, nil
}

// prepare creates a file of size bytes with every block written and
// synced, as a bbolt file's pages are once it has been in use.
func prepare(path string, size int64) (*os.File, error) {
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	chunk := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if _, err := fh.WriteAt(chunk, off); err != nil {
			fh.Close()
			return nil, err
		}
	}
	return fh, fh.Sync()
}

// commitAll writes pages new pages per commit, one pwrite each as bbolt
// does, then fdatasync, the meta page, fdatasync.
func commitAll(fh *os.File, pages, commits int) error {
	page := make([]byte, pageSize)
	for c := range commits {
		for p := range pages {
			if _, err := fh.WriteAt(page, int64(1+c*pages+p)*pageSize); err != nil {
				return err
			}
		}
		if err := syscall.Fdatasync(int(fh.Fd())); err != nil {
			return err
		}
		if _, err := fh.WriteAt(page, 0); err != nil {
			return err
		}
		if err := syscall.Fdatasync(int(fh.Fd())); err != nil {
			return err
		}
	}
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "fsync:", err)
	os.Exit(2)
}
