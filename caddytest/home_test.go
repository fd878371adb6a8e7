package caddytest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	caddytester "github.com/caddyserver/caddy/v2/caddytest"

	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
)

// homeChildEnv marks the run of this test binary that TestUserFoldersUntouched
// starts as a user would: with the user's HOME (or XDG folders) set.
const homeChildEnv = "CADDYTEST_USER_FOLDERS_CHILD"

// TestUserFoldersUntouched runs this package's test binary again with HOME,
// or XDG_CONFIG_HOME and XDG_DATA_HOME, set to a user's folders holding an
// autosave.json and a Caddy data folder, and starts Caddy there the way
// every test does (startCaddy, after TestMain), with a config that Caddy
// autosaves, that makes a local CA and a relay on the bolt store at its
// default path. Nothing in the user's folders may change.
func TestUserFoldersUntouched(t *testing.T) {
	if os.Getenv(homeChildEnv) != "" {
		userFoldersChild(t)
		return
	}
	for _, layout := range []string{"HOME", "XDG"} {
		t.Run(layout, func(t *testing.T) {
			home := t.TempDir()
			env := []string{"HOME=" + home}
			config, data := filepath.Join(home, ".config"), filepath.Join(home, ".local", "share")
			if layout == "XDG" {
				config, data = filepath.Join(home, "xdg-config"), filepath.Join(home, "xdg-data")
				env = append(env, "XDG_CONFIG_HOME="+config, "XDG_DATA_HOME="+data)
			}
			for path, content := range map[string]string{
				filepath.Join(config, "caddy", "autosave.json"):       `{"apps":{"http":{}}}`,
				filepath.Join(data, "caddy", "instance.uuid"):         "7d1c83a0-0000-4000-8000-000000000000",
				filepath.Join(data, "caddy", "webhook_relay", "x.db"): "the user's own",
			} {
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before, err := harness.Snapshot(home)
			if err != nil {
				t.Fatal(err)
			}

			// os.Args[0] is "caddy" once the in-process Caddy started
			bin, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "-test.run=^TestUserFoldersUntouched$", "-test.count=1", "-test.v")
			cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
				name, _, _ := strings.Cut(kv, "=")
				return name == "HOME" || strings.HasPrefix(name, "XDG_")
			}), append(env, homeChildEnv+"=1")...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("the run with the user's folders failed: %v\n%s", err, out)
			}

			after, err := harness.Snapshot(home)
			if err != nil {
				t.Fatal(err)
			}
			if changes := harness.Changes(before, after); len(changes) > 0 {
				t.Errorf("starting Caddy in the tests changed the user's folders (%s):\n  %s\nrun:\n%s",
					layout, strings.Join(changes, "\n  "), out)
			}
		})
	}
}

// userFoldersChild is the run TestUserFoldersUntouched starts: Caddy on
// ports of its own (the parent's in-process Caddy holds the usual ones),
// loaded through the same harness as every test, with a config that
// autosaves, makes a local CA and opens a bolt store at its default path.
func userFoldersChild(t *testing.T) {
	admin, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tester := caddytester.NewTester(t).WithDefaultOverrides(caddytester.Config{AdminPort: admin})
	tester.InitServer(fmt.Sprintf(`{
	skip_install_trust
	admin localhost:%d
	http_port %d
}

:%d {
	webhook_relay /in {
		upstream http://127.0.0.1:1/hook
		name user-folders
		store bolt
	}
}
`, admin, port, port), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	// the run did write, into the test's own folders
	for _, path := range []string{
		caddy.ConfigAutosavePath,
		filepath.Join(caddy.AppDataDir(), "pki", "authorities", "local", "root.crt"),
		filepath.Join(caddy.AppDataDir(), "webhook_relay", "user-folders.db"),
	} {
		if _, err := os.Stat(path); err != nil {
			t.Errorf("Caddy did not write %s: %v", path, err)
		}
	}
	t.Logf("Caddy's folders: %s, %s", caddy.AppConfigDir(), caddy.AppDataDir())
}
