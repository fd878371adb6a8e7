package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/caddyfilearg"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

func init() {
	caddy.RegisterModule(Backend{})
}

// Defaults of the redis store.
const (
	DefaultKeyPrefix = "webhook_relay:"
	DefaultTimeout   = 2 * time.Second
)

// consumerName is this process's name in every relay's consumer group:
// host name and pid, the same for every config this process loads.
var consumerName = DefaultConsumer()

// Backend keeps a relay's markers, queue and dead letters in Redis, so
// several Caddy instances can share them: each key is accepted once across
// all instances, each instance delivers a share of the queue, and the
// entries of an instance that dies are taken over by the others as soon as
// its liveness key in Redis expires (DefaultLivenessTTL, 5s). It is as
// durable as the Redis behind it: run Redis with appendonly yes and
// maxmemory-policy noeviction, and with replicas set WaitReplicas.
//
// A single server, Sentinel or Cluster, through go-redis's UniversalClient:
// one address is a single server (or a Cluster with Cluster set); with
// SentinelMaster the addresses are sentinels; several addresses without it
// are Cluster nodes.
type Backend struct {
	// URL of the server: redis://[[user]:password@]host:port[/db] or
	// rediss:// for TLS. Placeholders such as {env.REDIS_URL} are resolved
	// when the store opens. Its user, password and db apply unless
	// Username, Password or DB are set.
	URL string `json:"url,omitempty"`

	// Addresses are more host:port addresses besides the URL's: sentinels
	// with SentinelMaster, Cluster nodes without it.
	Addresses []string `json:"addresses,omitempty"`

	// SentinelMaster is the master's name known to the sentinels; setting
	// it makes the addresses sentinels.
	SentinelMaster string `json:"sentinel_master,omitempty"`

	// Username for Redis ACLs.
	Username string `json:"username,omitempty"`

	// Password, written as a placeholder such as {env.REDIS_PASSWORD}; it
	// is resolved when the store opens and never logged.
	Password string `json:"password,omitempty"`

	// DB is the database number (not with Cluster). Default 0, or the URL's.
	DB int `json:"db,omitempty"`

	// KeyPrefix starts every key; a relay's keys are all under the hash
	// tag {<key_prefix><relay name>}. Default "webhook_relay:".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// PoolSize is the connection pool size per node. Default: go-redis's,
	// 10 per CPU.
	PoolSize int `json:"pool_size,omitempty"`

	// DialTimeout, ReadTimeout and WriteTimeout bound talking to Redis, so
	// that an unreachable Redis turns into a quick 503. Default 2s each.
	DialTimeout  caddy.Duration `json:"dial_timeout,omitempty"`
	ReadTimeout  caddy.Duration `json:"read_timeout,omitempty"`
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// VisibilityTimeout is how long a payload claimed by an instance that
	// is alive but stuck stays with it before another instance takes it
	// over. An instance that died (killed, cut off from Redis) loses its
	// payloads sooner: when its liveness key expires, 5s after its last
	// renewal. Live instances renew their claims every 10s, so keep it well
	// above that. Default 60s.
	VisibilityTimeout caddy.Duration `json:"visibility_timeout,omitempty"`

	// DurableAck makes the relay wait, before it answers 200 (a duplicate's
	// too), until Redis has fsynced the payload to its append-only file
	// (WAITAOF; needs Redis >= 7.2 with appendonly yes). Without it a 200
	// means the payload is in Redis's memory and, with appendfsync
	// everysec, on disk within a second.
	DurableAck bool `json:"durable_ack,omitempty"`

	// WaitReplicas makes the relay wait, before it answers 200, until this
	// many replicas have the payload (Redis WAIT, on the connection that
	// wrote it), so that a failover to one of them keeps it. Fewer within
	// WaitReplicasTimeout and the sender gets 503, and so do its retries
	// until the replicas have the payload: a duplicate is answered 200 only
	// then too. On Cluster they are the replicas of
	// the master of the relay's slot. Default 0: do not wait.
	WaitReplicas int `json:"wait_replicas,omitempty"`

	// WaitReplicasTimeout bounds the wait for the replicas. Default 1s.
	WaitReplicasTimeout caddy.Duration `json:"wait_replicas_timeout,omitempty"`

	// Cluster makes a single address a Redis Cluster (a managed cluster's
	// configuration endpoint); several addresses without SentinelMaster are
	// one already.
	Cluster bool `json:"cluster,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Backend) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.webhook_relay.stores.redis",
		New: func() caddy.Module { return new(Backend) },
	}
}

// Provision checks the settings; nothing is opened until OpenStore.
func (r *Backend) Provision(caddy.Context) error {
	if r.URL == "" && len(r.Addresses) == 0 {
		return fmt.Errorf("redis store: url or addresses required, e.g. redis://localhost:6379/0")
	}
	if r.KeyPrefix == "" {
		r.KeyPrefix = DefaultKeyPrefix
	}
	switch {
	case strings.ContainsAny(r.KeyPrefix, "{}"):
		return fmt.Errorf("redis store: key_prefix %q must not contain '{' or '}': the relay's hash tag is built from it", r.KeyPrefix)
	case r.DB < 0, r.PoolSize < 0, r.WaitReplicas < 0:
		return fmt.Errorf("redis store: db, pool_size and wait_replicas must not be negative")
	case r.Cluster && r.SentinelMaster != "":
		return fmt.Errorf("redis store: cluster and sentinel_master exclude each other")
	case r.WaitReplicasTimeout < 0:
		return fmt.Errorf("redis store: wait_replicas timeout must be a positive duration")
	case r.DialTimeout < 0, r.ReadTimeout < 0, r.WriteTimeout < 0, r.VisibilityTimeout < 0:
		return fmt.Errorf("redis store: timeouts must be positive durations")
	case r.VisibilityTimeout != 0 && time.Duration(r.VisibilityTimeout) < 20*time.Second:
		return fmt.Errorf("redis store: visibility_timeout %s is too short: live instances renew claims every 10s; use at least 20s",
			time.Duration(r.VisibilityTimeout))
	}
	return nil
}

// StoreIdentity implements queue.Backend. It names the servers, database and
// prefix, never credentials.
func (r Backend) StoreIdentity(relayName string) string {
	addrs := append([]string{redactURL(r.URL)}, r.Addresses...)
	mode := ""
	if r.Cluster {
		mode = "|cluster"
	}
	return "redis:" + strings.Join(addrs, ",") + mode + "|master=" + r.SentinelMaster +
		"|user=" + r.Username + "|db=" + strconv.Itoa(r.DB) + "|" + r.prefix() + relayName
}

func (r Backend) prefix() string {
	if r.KeyPrefix == "" {
		return DefaultKeyPrefix
	}
	return r.KeyPrefix
}

// redactURL drops the user information of a URL, placeholders included,
// without parsing it (placeholders do not parse).
func redactURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	authority, path, _ := strings.Cut(rest, "/")
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		authority = authority[i+1:]
	}
	if path != "" {
		return scheme + "://" + authority + "/" + path
	}
	return scheme + "://" + authority
}

// clientOptions resolves placeholders and builds the go-redis options.
func (r Backend) clientOptions() (*goredis.UniversalOptions, error) {
	repl := caddy.NewReplacer()
	opts := &goredis.UniversalOptions{
		MasterName:   repl.ReplaceKnown(r.SentinelMaster, ""),
		PoolSize:     r.PoolSize,
		DialTimeout:  redisTimeout(r.DialTimeout, DefaultTimeout),
		ReadTimeout:  redisTimeout(r.ReadTimeout, DefaultTimeout),
		WriteTimeout: redisTimeout(r.WriteTimeout, DefaultTimeout),
		// No retries (-1; 0 means go-redis's default, 3). A retry resends
		// a command whose reply was lost but which may have run: a claim
		// would strand what the lost reply carried until the visibility
		// timeout, a bury would report its entry gone. The store knows
		// what may run twice (an admit, by its token), and a dead Redis
		// turns into a quick 503.
		MaxRetries: -1,
		// One pool for every command. go-redis otherwise gives pipelines
		// (admits, acks) a pool of their own, and each pool, after a run of
		// failed dials, fails at once until its own probe, once a second,
		// reaches Redis again: when Redis comes back, admits and claims
		// then fail and succeed by turns for up to a second.
		PipelinePoolSize: -1,
		IsClusterMode:    r.Cluster,
		// No CLIENT SETINFO at connect, nor CLIENT MAINT_NOTIFICATIONS:
		// some servers (older or managed Redis, Valkey, proxies) refuse
		// them, and the relay needs neither.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if r.URL != "" {
		raw := repl.ReplaceKnown(r.URL, "")
		u, err := goredis.ParseURL(raw)
		if err != nil {
			// the message may quote the URL, password included
			return nil, fmt.Errorf("redis store: url %s: not a redis:// or rediss:// URL", redactURL(r.URL))
		}
		opts.Addrs = append(opts.Addrs, u.Addr)
		opts.Username, opts.Password, opts.DB, opts.TLSConfig = u.Username, u.Password, u.DB, u.TLSConfig
	}
	for _, a := range r.Addresses {
		opts.Addrs = append(opts.Addrs, repl.ReplaceKnown(a, ""))
	}
	if r.Username != "" {
		opts.Username = repl.ReplaceKnown(r.Username, "")
	}
	if r.Password != "" {
		pw, err := repl.ReplaceOrErr(r.Password, false, true)
		if err != nil || pw == "" {
			return nil, fmt.Errorf("redis store: password resolves to empty; set the variable it names or remove it")
		}
		opts.Password = pw
	}
	if r.DB != 0 {
		opts.DB = r.DB
	}
	return opts, nil
}

func redisTimeout(d caddy.Duration, def time.Duration) time.Duration {
	if d > 0 {
		return time.Duration(d)
	}
	return def
}

// OpenStore implements queue.Backend.
func (r Backend) OpenStore(relayName string, opts queue.Options, logger *zap.Logger) (queue.Store, error) {
	copts, err := r.clientOptions()
	if err != nil {
		return nil, err
	}
	client := goredis.NewUniversalClient(copts)
	timeout := max(copts.DialTimeout+copts.ReadTimeout, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := New(ctx, client, Config{
		Prefix:              r.prefix() + relayName,
		Consumer:            consumerName,
		VisibilityTimeout:   time.Duration(r.VisibilityTimeout),
		DurableAck:          r.DurableAck,
		WaitReplicas:        r.WaitReplicas,
		WaitReplicasTimeout: time.Duration(r.WaitReplicasTimeout),
		Logger:              logger.With(zap.String("relay", relayName), zap.String("store", r.StoreIdentity(relayName))),
	}, opts)
	if err != nil {
		client.Close()
		return nil, err
	}
	return s, nil
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens:
//
//	store redis <url> {
//		username           <name>
//		password           <password>
//		db                 <n>
//		sentinel_master    <name>
//		addresses          <host:port...>
//		key_prefix         <prefix>
//		pool_size          <n>
//		dial_timeout       <duration>
//		read_timeout       <duration>
//		write_timeout      <duration>
//		visibility_timeout <duration>
//		durable_ack
//		wait_replicas      <n> [<timeout>]
//		cluster
//	}
func (r *Backend) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	if !d.NextArg() {
		return d.Errf("store redis: missing URL, e.g. redis://localhost:6379/0")
	}
	r.URL = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] {
			return d.Errf("store redis: %s given twice", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "username":
			r.Username, err = caddyfilearg.String(d)
		case "password":
			r.Password, err = caddyfilearg.String(d)
		case "sentinel_master":
			r.SentinelMaster, err = caddyfilearg.String(d)
		case "key_prefix":
			r.KeyPrefix, err = caddyfilearg.String(d)
		case "addresses":
			r.Addresses = d.RemainingArgs()
			if len(r.Addresses) == 0 {
				return d.ArgErr()
			}
		case "db":
			r.DB, err = caddyfilearg.Int(d, 0)
		case "pool_size":
			r.PoolSize, err = caddyfilearg.Int(d, 1)
		case "dial_timeout":
			r.DialTimeout, err = caddyDuration(d)
		case "read_timeout":
			r.ReadTimeout, err = caddyDuration(d)
		case "write_timeout":
			r.WriteTimeout, err = caddyDuration(d)
		case "visibility_timeout":
			r.VisibilityTimeout, err = caddyDuration(d)
		case "durable_ack":
			if d.NextArg() {
				return d.ArgErr()
			}
			r.DurableAck = true
		case "cluster":
			if d.NextArg() {
				return d.ArgErr()
			}
			r.Cluster = true
		case "wait_replicas":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.Errf("wait_replicas: want <n> [<timeout>], e.g. wait_replicas 1 1s")
			}
			n, convErr := strconv.Atoi(args[0])
			if convErr != nil || n < 1 {
				return d.Errf("wait_replicas: want a positive whole number of replicas, got '%s'", args[0])
			}
			r.WaitReplicas = n
			if len(args) == 2 {
				dur, durErr := caddy.ParseDuration(args[1])
				if durErr != nil || dur <= 0 {
					return d.Errf("wait_replicas: bad timeout '%s', want a positive duration such as 1s", args[1])
				}
				r.WaitReplicasTimeout = caddy.Duration(dur)
			}
		default:
			return d.Errf("store redis: unrecognized subdirective '%s'", name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// caddyDuration reads the subdirective's only argument as a positive duration.
func caddyDuration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	dur, err := caddyfilearg.Duration(d)
	return caddy.Duration(dur), err
}

// Interface guards
var (
	_ queue.Backend         = (*Backend)(nil)
	_ caddy.Provisioner     = (*Backend)(nil)
	_ caddyfile.Unmarshaler = (*Backend)(nil)
)
