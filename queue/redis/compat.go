package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// The store needs Redis 7.0 or later: XCLAIM drops the pending entries
// whose payload is gone, and scripts replicate their effects.
const minMajor, minMinor = 7, 0

// serverVersion reads the server's name and version from the server
// section of INFO: Valkey also sets valkey_version, and its redis_version
// is the Redis version it is compatible with.
func serverVersion(info string) (name, version string, major, minor int, err error) {
	fields := make(map[string]string)
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok {
			fields[k] = v
		}
	}
	name, version = "Redis", fields["redis_version"]
	if v := fields["valkey_version"]; v != "" {
		name = "Valkey " + v + ", compatible with Redis"
	}
	if version == "" {
		return name, "", 0, 0, fmt.Errorf("no redis_version in INFO server")
	}
	parts := strings.SplitN(version, ".", 3)
	major, err1 := strconv.Atoi(parts[0])
	if len(parts) < 2 || err1 != nil {
		return name, version, 0, 0, fmt.Errorf("cannot read redis_version %q", version)
	}
	minor, err = strconv.Atoi(parts[1])
	if err != nil {
		return name, version, 0, 0, fmt.Errorf("cannot read redis_version %q", version)
	}
	return name, version, major, minor, nil
}

// checkVersion refuses a server older than Redis 7.0, naming the version
// it found. A server that hides INFO (some managed ones rename it) gets a
// warning and the benefit of the doubt.
func checkVersion(ctx context.Context, client goredis.UniversalClient, log *zap.Logger) error {
	info, err := client.Info(ctx, "server").Result()
	if err != nil {
		log.Warn("cannot read the server's version (INFO server); the redis store needs Redis >= 7.0", zap.Error(err))
		return nil
	}
	return versionError(info, log)
}

// versionError is checkVersion's verdict on the server section of INFO.
func versionError(info string, log *zap.Logger) error {
	name, version, major, minor, err := serverVersion(info)
	if err != nil {
		log.Warn("cannot read the server's version; the redis store needs Redis >= 7.0", zap.Error(err))
		return nil
	}
	if major < minMajor || major == minMajor && minor < minMinor {
		return fmt.Errorf("redis store: the server is %s %s; the relay needs Redis >= %d.%d (XCLAIM dropping deleted entries, script effects replication): upgrade it",
			name, version, minMajor, minMinor)
	}
	return nil
}
