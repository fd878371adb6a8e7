package redis

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/internal/redistest"
	"github.com/hookrelay/caddy-webhook-relay/queue"
)

func TestRedisStoreCaddyfile(t *testing.T) {
	in := `redis rediss://cache.internal:6380/2 {
		username           relay
		password           {env.REDIS_PASSWORD}
		db                 3
		sentinel_master    mymaster
		addresses          s1:26379 s2:26379
		key_prefix         hooks:
		pool_size          20
		dial_timeout       1s
		read_timeout       3s
		write_timeout      4s
		visibility_timeout 90s
		durable_ack
	}`
	var got Backend
	if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
		t.Fatal(err)
	}
	want := Backend{
		URL:               "rediss://cache.internal:6380/2",
		Username:          "relay",
		Password:          "{env.REDIS_PASSWORD}",
		DB:                3,
		SentinelMaster:    "mymaster",
		Addresses:         []string{"s1:26379", "s2:26379"},
		KeyPrefix:         "hooks:",
		PoolSize:          20,
		DialTimeout:       caddy.Duration(time.Second),
		ReadTimeout:       caddy.Duration(3 * time.Second),
		WriteTimeout:      caddy.Duration(4 * time.Second),
		VisibilityTimeout: caddy.Duration(90 * time.Second),
		DurableAck:        true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	var bare Backend
	if err := bare.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`redis redis://localhost:6379`)); err != nil {
		t.Fatal(err)
	}
	if bare.URL != "redis://localhost:6379" {
		t.Errorf("URL = %q", bare.URL)
	}
}

func TestRedisStoreCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"no url", `redis`, "missing URL"},
		{"two urls", `redis redis://a redis://b`, "wrong argument count"},
		{"unknown", "redis redis://a {\n nope 1\n}", "unrecognized subdirective 'nope'"},
		{"repeated", "redis redis://a {\n db 1\n db 2\n}", "db given twice"},
		{"username no arg", "redis redis://a {\n username\n}", "wrong argument count"},
		{"password two args", "redis redis://a {\n password a b\n}", "wrong argument count"},
		{"sentinel no arg", "redis redis://a {\n sentinel_master\n}", "wrong argument count"},
		{"key_prefix no arg", "redis redis://a {\n key_prefix\n}", "wrong argument count"},
		{"addresses none", "redis redis://a {\n addresses\n}", "wrong argument count"},
		{"db not a number", "redis redis://a {\n db one\n}", "db: want a whole number >= 0"},
		{"db negative", "redis redis://a {\n db -1\n}", "db: want a whole number >= 0"},
		{"pool_size zero", "redis redis://a {\n pool_size 0\n}", "pool_size: want a positive whole number, got '0'"},
		{"dial_timeout bad", "redis redis://a {\n dial_timeout soon\n}", "dial_timeout: bad duration 'soon', want a positive duration"},
		{"read_timeout missing", "redis redis://a {\n read_timeout\n}", "wrong argument count"},
		{"write_timeout zero", "redis redis://a {\n write_timeout 0s\n}", "write_timeout: bad duration '0s', want a positive duration"},
		{"visibility two args", "redis redis://a {\n visibility_timeout 1m 2m\n}", "wrong argument count"},
		{"durable_ack arg", "redis redis://a {\n durable_ack yes\n}", "wrong argument count"},
		{"wait_replicas none", "redis redis://a {\n wait_replicas\n}", "wait_replicas: want <n> [<timeout>]"},
		{"wait_replicas three", "redis redis://a {\n wait_replicas 1 1s 2s\n}", "wait_replicas: want <n> [<timeout>]"},
		{"wait_replicas zero", "redis redis://a {\n wait_replicas 0\n}", "want a positive whole number of replicas, got '0'"},
		{"wait_replicas timeout", "redis redis://a {\n wait_replicas 1 soon\n}", "bad timeout 'soon'"},
		{"cluster arg", "redis redis://a {\n cluster yes\n}", "wrong argument count"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s Backend
			err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestRedisStoreProvisionErrors(t *testing.T) {
	tests := []struct {
		name string
		s    Backend
		want string
	}{
		{"nothing to connect to", Backend{}, "url or addresses required"},
		{"brace in prefix", Backend{URL: "redis://a", KeyPrefix: "a{b"}, "must not contain"},
		{"short visibility", Backend{URL: "redis://a", VisibilityTimeout: caddy.Duration(time.Second)}, "too short"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.Provision(caddy.Context{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// go-redis must not resend commands on its own (the store decides what may
// run twice), and all commands share one pool, so that they see Redis come
// back at the same time.
func TestRedisStoreClientDoesNotRetry(t *testing.T) {
	opts, err := Backend{URL: "redis://localhost:6379/0"}.clientOptions()
	if err != nil {
		t.Fatal(err)
	}
	if opts.MaxRetries != -1 {
		t.Errorf("MaxRetries = %d, want -1 (none)", opts.MaxRetries)
	}
	if opts.PipelinePoolSize != -1 {
		t.Errorf("PipelinePoolSize = %d, want -1 (one pool)", opts.PipelinePoolSize)
	}
}

func TestRedisStoreIdentityHasNoSecrets(t *testing.T) {
	s := Backend{URL: "redis://user:hunter2@cache:6379/1", Password: "{env.PW}", KeyPrefix: "p:"}
	id := s.StoreIdentity("default")
	if strings.Contains(id, "hunter2") || strings.Contains(id, "PW") {
		t.Errorf("identity %q carries the password", id)
	}
	if !strings.Contains(id, "cache:6379/1") || !strings.Contains(id, "p:default") {
		t.Errorf("identity %q does not name the server and keys", id)
	}
	if a, b := s.StoreIdentity("a"), s.StoreIdentity("b"); a == b {
		t.Errorf("two relays share the identity %q", a)
	}
}

func TestRedisStoreOpen(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("WEBHOOK_RELAY_TEST_REDIS", srv.URL())
	s := Backend{URL: "{env.WEBHOOK_RELAY_TEST_REDIS}", KeyPrefix: "open-test:"}
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	st, err := s.OpenStore("default", queue.Options{Window: time.Hour}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	e := &queue.Entry{Key: "k", Body: []byte("{}")}
	if got, err := st.Admit(context.Background(), e); err != nil || got != queue.Accepted {
		t.Fatalf("Admit = %v, %v", got, err)
	}

	// durable_ack on a Redis without WAITAOF or without AOF: a clear error at open
	s.DurableAck = true
	if st2, err := s.OpenStore("other", queue.Options{Window: time.Hour}, zap.NewNop()); err == nil {
		st2.Close()
		t.Fatal("durable_ack opened on a Redis without appendonly")
	} else if !strings.Contains(err.Error(), "durable_ack") {
		t.Errorf("error = %v, want it to name durable_ack", err)
	}

	// an unreachable Redis does not fail the config (that would take all of
	// Caddy down with it): the store opens quickly and admits fail (503)
	down := Backend{URL: "redis://127.0.0.1:1/0", DialTimeout: caddy.Duration(200 * time.Millisecond)}
	start := time.Now()
	st3, err := down.OpenStore("x", queue.Options{Window: time.Hour}, zap.NewNop())
	if err != nil {
		t.Fatalf("open with Redis down: %v", err)
	}
	defer st3.Close()
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("open on a closed port took %s", took)
	}
	if _, err := st3.Admit(context.Background(), &queue.Entry{Key: "k", Body: []byte("{}")}); err == nil {
		t.Fatal("admit succeeded with Redis down")
	}
}

func TestRedisStoreCaddyfileProduction(t *testing.T) {
	in := `redis redis://cluster.example:6379 {
		cluster
		wait_replicas 2 500ms
	}`
	var got Backend
	if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
		t.Fatal(err)
	}
	want := Backend{URL: "redis://cluster.example:6379", Cluster: true, WaitReplicas: 2,
		WaitReplicasTimeout: caddy.Duration(500 * time.Millisecond)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	var one Backend
	if err := one.UnmarshalCaddyfile(caddyfile.NewTestDispenser("redis redis://a {\n wait_replicas 1\n}")); err != nil {
		t.Fatal(err)
	}
	if one.WaitReplicas != 1 || one.WaitReplicasTimeout != 0 {
		t.Errorf("wait_replicas 1: got %d, %v; want 1 and the default timeout", one.WaitReplicas, one.WaitReplicasTimeout)
	}
	opts, err := got.clientOptions()
	if err != nil {
		t.Fatal(err)
	}
	if !opts.IsClusterMode || len(opts.Addrs) != 1 {
		t.Errorf("cluster with one address: IsClusterMode %v, addrs %v", opts.IsClusterMode, opts.Addrs)
	}
	if !opts.DisableIdentity || opts.MaintNotificationsConfig == nil || opts.MaintNotificationsConfig.Mode != "disabled" {
		t.Errorf("optional handshakes not disabled: DisableIdentity %v, maintenance notifications %+v",
			opts.DisableIdentity, opts.MaintNotificationsConfig)
	}

	if err := (&Backend{URL: "redis://a", Cluster: true, SentinelMaster: "m"}).Provision(caddy.Context{}); err == nil {
		t.Error("cluster with sentinel_master provisioned")
	}
}

func TestRedisServerVersion(t *testing.T) {
	tests := []struct {
		info, name, version string
		major, minor        int
		bad                 bool
	}{
		{"# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n", "Redis", "7.0.15", 7, 0, false},
		{"# Server\r\nredis_version:6.2.14\r\n", "Redis", "6.2.14", 6, 2, false},
		{"# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\n", "Valkey 8.0.1, compatible with Redis", "7.2.4", 7, 2, false},
		{"# Server\r\nredis_mode:standalone\r\n", "Redis", "", 0, 0, true},
		{"redis_version:seven\r\n", "Redis", "seven", 0, 0, true},
	}
	for _, tc := range tests {
		name, version, major, minor, err := serverVersion(tc.info)
		if (err != nil) != tc.bad || name != tc.name || version != tc.version || major != tc.major || minor != tc.minor {
			t.Errorf("serverVersion(%q) = %q %q %d.%d %v", tc.info, name, version, major, minor, err)
		}
	}
}

func TestRedisServerVersionRefused(t *testing.T) {
	err := versionError("# Server\r\nredis_version:6.2.14\r\n", zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "Redis 6.2.14") || !strings.Contains(err.Error(), ">= 7.0") {
		t.Errorf("Redis 6.2.14: %v; want a refusal naming the version found and the one needed", err)
	}
	for _, ok := range []string{"redis_version:7.0.0\r\n", "redis_version:8.2.1\r\n",
		"redis_version:7.2.4\r\nvalkey_version:8.1.0\r\n", "no version here\r\n"} {
		if err := versionError(ok, zap.NewNop()); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	// and the real server of the tests passes
	srv := redistest.Start(t, redistest.Options{})
	info, err := srv.Info("server")
	if err != nil {
		t.Fatal(err)
	}
	if err := versionError(info, zap.NewNop()); err != nil {
		t.Errorf("the test's redis-server refused: %v", err)
	}
}

// A store whose own liveness key had lapsed (it was cut off from Redis, as
// the others may have been) only renews it in that round; the next round
// takes over the consumers whose key is gone.
func TestRedisLivenessFirstRoundBackOnlyRenews(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx := context.Background()
	open := func(consumer string) *Store {
		s, err := New(ctx, goredis.NewClient(&goredis.Options{Addr: srv.Addr()}), Config{
			Prefix: "lapse", Consumer: consumer, VisibilityTimeout: time.Minute, LivenessTTL: time.Minute,
		}, queue.Options{Window: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		s.stopAlive() // the test runs the rounds
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := open("a"), open("b")
	if got, err := a.Admit(ctx, &queue.Entry{Key: "k", Body: []byte("{}")}); err != nil || got != queue.Accepted {
		t.Fatalf("Admit = %v, %v", got, err)
	}
	if es, err := a.Claim(ctx, 10); err != nil || len(es) != 1 {
		t.Fatalf("a claimed %v, %v", es, err)
	}
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer c.Close()
	// both keys lapse, as when Redis was out of reach for everyone
	if err := c.Del(ctx, a.alivePrefix+"a", b.alivePrefix+"b").Err(); err != nil {
		t.Fatal(err)
	}
	pendingOf := func(consumer string) int64 {
		p, err := c.XPending(ctx, a.stream, groupName).Result()
		if err != nil {
			t.Fatal(err)
		}
		return p.Consumers[consumer]
	}
	b.liveness(ctx)
	if n := pendingOf("a"); n != 1 {
		t.Fatalf("after b's first round back, a holds %d entries, want still 1", n)
	}
	b.liveness(ctx)
	if n := pendingOf("a"); n != 0 {
		t.Fatalf("after b's second round, a holds %d entries, want 0 (taken over)", n)
	}
	if es, err := b.Claim(ctx, 10); err != nil || len(es) != 1 {
		t.Errorf("b claimed %v, %v after the takeover, want the entry", es, err)
	}
}
