package processtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/harness"
)

// TestUserFoldersUntouched: the built Caddy the harness runs keeps its
// config and data in the instance's own folders, whatever HOME and the XDG
// folders of the test process say: `caddy environ` names the instance's,
// and a relay on the bolt store at its default path changes nothing in the
// user's folders.
func TestUserFoldersUntouched(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("XDG_DATA_HOME", filepath.Join(home, ".local", "share"))
	autosave := filepath.Join(home, ".config", "caddy", "autosave.json")
	if err := os.MkdirAll(filepath.Dir(autosave), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(autosave, []byte(`{"apps":{"http":{}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	before, err := harness.Snapshot(home)
	if err != nil {
		t.Fatal(err)
	}

	in := NewInstance(t)
	env := in.Spawn("environ")
	if err := env.Wait(30 * time.Second); err != nil {
		t.Fatalf("caddy environ: %v\n%s", err, env.Log())
	}
	for _, want := range []string{
		"caddy.AppDataDir=" + in.DataDir(),
		"caddy.AppConfigDir=" + filepath.Join(in.Home, "config", "caddy"),
	} {
		if !strings.Contains(env.Log(), want+"\n") {
			t.Errorf("caddy environ does not say %s:\n%s", want, env.Log())
		}
	}

	up := NewUpstream(t)
	up.Start()
	in.Start(`:{http_port} {
	webhook_relay /in {
		upstream ` + up.URL("/hook") + `
		name user-folders
		store bolt
	}
}`).Stop(30 * time.Second)
	if _, err := os.Stat(filepath.Join(in.DataDir(), "webhook_relay", "user-folders.db")); err != nil {
		t.Errorf("the bolt store is not in the instance's data folder: %v", err)
	}

	after, err := harness.Snapshot(home)
	if err != nil {
		t.Fatal(err)
	}
	if changes := harness.Changes(before, after); len(changes) > 0 {
		t.Errorf("running caddy through the harness changed the user's folders:\n  %s", strings.Join(changes, "\n  "))
	}
}
