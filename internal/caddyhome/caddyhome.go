// Package caddyhome gives the Caddy running in this process (the one the
// caddytest harness starts) config and data folders of the test's own. The
// built binary gets its own through internal/harness, which sets HOME and
// the XDG folders of each process it starts.
package caddyhome

import (
	"os"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
)

// Use points the Caddy of this process (the in-process one
// Caddy's caddytest starts) and every caddy it runs at Caddy's config and
// data folders under dir, never the user's: no autosave.json over the
// user's, no CA, certificates or bolt files in the user's data folder. Call
// it from TestMain, before Caddy starts.
//
// It sets XDG_CONFIG_HOME and XDG_DATA_HOME, which caddy.AppConfigDir and
// caddy.AppDataDir read when called, and sets again the two paths Caddy
// computed from them when the process started (caddy.ConfigAutosavePath,
// caddy.DefaultStorage), as Caddy does itself after loading an env file.
// HOME and XDG_CACHE_HOME stay: the go command keeps its build cache there
// (the tests build Caddy). Its settings file (`go env -w`) is found under
// XDG_CONFIG_HOME too, so GOENV keeps it where it was.
func Use(dir string) error {
	if _, set := os.LookupEnv("GOENV"); !set {
		if cfg, err := os.UserConfigDir(); err == nil {
			if err := os.Setenv("GOENV", filepath.Join(cfg, "go", "env")); err != nil {
				return err
			}
		}
	}
	for name, sub := range map[string]string{"XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data"} {
		path := filepath.Join(dir, sub)
		if err := os.MkdirAll(path, 0o700); err != nil {
			return err
		}
		if err := os.Setenv(name, path); err != nil {
			return err
		}
	}
	caddy.ConfigAutosavePath = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	caddy.DefaultStorage = &certmagic.FileStorage{Path: caddy.AppDataDir()}
	return nil
}
