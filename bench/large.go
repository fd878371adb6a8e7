package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
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
			if err := unlinkRelayKeys(e.redisAddr, t.name); err != nil {
				return fmt.Errorf("emptying %s in Redis: %v", t.name, err)
			}
		}
	}
	return nil
}

// unlinkRelayKeys removes every key of relay name (default key prefix:
// they all carry the hash tag {webhook_relay:<name>}).
func unlinkRelayKeys(addr, name string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, ReadTimeout: 30 * time.Second})
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

// memory is process pid's memory now; zero when it cannot be read.
func memory(pid int) harness.Memory {
	m, _ := harness.ReadMemory(pid)
	return m
}

// sampleOwn samples process pid's own memory (RssAnon+RssShmem: VmRSS
// without mapped files) every interval until the returned function is
// called, which returns the peak in KiB.
func sampleOwn(pid int, interval time.Duration) func() int {
	stop, done := make(chan struct{}), make(chan int, 1)
	go func() {
		peak := 0
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			peak = max(peak, memory(pid).Own())
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
