package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Large bodies (-body-size): what only that mode needs.

// emptyBurstStores deletes what the burst relays (upstream down) stored:
// their bolt files, and their keys in Redis. Caddy must not be running.
// The live relays' stores are left alone: the delivery check needs them.
func emptyBurstStores(active []*target, e env) error {
	for _, t := range active {
		if t.live {
			continue
		}
		switch t.store {
		case "bolt":
			if err := os.Remove(filepath.Join(e.dir, t.name+".db")); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("emptying %s: %v", t.name, err)
			}
		case "redis":
			if err := unlinkRelayKeys(e.redisPort, t.name); err != nil {
				return fmt.Errorf("emptying %s in Redis: %v", t.name, err)
			}
		}
	}
	return nil
}

// unlinkRelayKeys removes every key of relay name (default key prefix:
// they all carry the hash tag {webhook_relay:<name>}).
func unlinkRelayKeys(port int, name string) error {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), ReadTimeout: 30 * time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// SCAN's pattern is a glob: escape the tag's brackets, none of the
	// others is special.
	iter := c.Scan(ctx, 0, `\{webhook_relay:`+name+`\}*`, 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return err
	}
	if len(keys) == 0 {
		return nil
	}
	return c.Unlink(ctx, keys...).Err() // freed in the background, not in Redis's main thread
}

// peakRSS is the process's peak resident set size so far (VmHWM), in KiB.
func (p *proc) peakRSS() int { return p.status("VmHWM") }

// rss is the process's resident set size now (VmRSS), in KiB.
func (p *proc) rss() int { return p.status("VmRSS") }

// sampleOwn samples the process's own memory (RssAnon+RssShmem: VmRSS
// without mapped files) every interval until the returned function is
// called, which returns the peak in KiB.
func (p *proc) sampleOwn(interval time.Duration) func() int {
	stop, done := make(chan struct{}), make(chan int, 1)
	go func() {
		peak := 0
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			peak = max(peak, p.status("RssAnon")+p.status("RssShmem"))
			select {
			case <-stop:
				done <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return func() int { close(stop); return <-done }
}

// status reads a "<field>: <n> kB" line of /proc/<pid>/status; 0 when it
// cannot.
func (p *proc) status(field string) int {
	if p == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}
