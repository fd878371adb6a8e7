package caddytest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// validate adapts a Caddyfile and runs caddy.Validate on it, which
// provisions every module and cleans them up again, as `caddy validate`
// does.
func validate(t *testing.T, caddyfile string) error {
	t.Helper()
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(js, &cfg); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&cfg)
}

// loadError posts caddyfile to the running Caddy's /load and returns the
// admin endpoint's error, or "" when the config loaded.
func loadError(t *testing.T, caddyfile string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+adminAddr+"/load", strings.NewReader(caddyfile))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	return string(body)
}

const (
	unsetVar = "WEBHOOK_RELAY_TEST_UNSET_SECRET"
	setVar   = "WEBHOOK_RELAY_TEST_SET_SECRET"
)

// unsetEnv makes sure name is not set while the test runs.
func unsetEnv(t *testing.T, name string) {
	t.Setenv(name, "") // restores the old value when the test ends
	os.Unsetenv(name)
}

// TestConfigErrorUnsetSecret: a secret whose placeholder resolves to empty
// is a config error naming the placeholder, and the error shows no secret.
func TestConfigErrorUnsetSecret(t *testing.T) {
	unsetEnv(t, unsetVar)
	t.Setenv(setVar, "env-secret-value-7f3a")
	cfg := site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		auth_query token literal-secret-value-91c2 {env.%s}
		auth_query sig {env.%s}
		store memory
	}`, relayName(t), unsetVar, setVar))

	check := func(t *testing.T, msg string) {
		t.Helper()
		if msg == "" {
			t.Fatal("config with an unset secret loaded; want an error")
		}
		if !strings.Contains(msg, "{env."+unsetVar+"}") {
			t.Errorf("error does not name the placeholder {env.%s}: %s", unsetVar, msg)
		}
		for _, secret := range []string{"literal-secret-value-91c2", "env-secret-value-7f3a"} {
			if strings.Contains(msg, secret) {
				t.Errorf("error shows the secret %q: %s", secret, msg)
			}
		}
	}

	t.Run("caddy validate", func(t *testing.T) {
		err := validate(t, cfg)
		if err == nil {
			t.Fatal("caddy.Validate: no error")
		}
		check(t, err.Error())
	})
	t.Run("admin load", func(t *testing.T) {
		startCaddy(t, site("")) // make sure Caddy runs
		check(t, loadError(t, cfg))
	})
}

// TestConfigErrorSecretPartlyEmpty: the README says a placeholder that
// resolves to empty is a configuration error, not an open door. A secret
// written as "whk_{env.UNSET}" would otherwise be the public string "whk_".
func TestConfigErrorSecretPartlyEmpty(t *testing.T) {
	unsetEnv(t, unsetVar)
	err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		auth_query token whk_{env.%s}
		store memory
	}`, relayName(t), unsetVar)))
	if err == nil {
		t.Fatalf("auth_query secret whk_{env.%s} with the variable unset was accepted: "+
			"the relay now lets in anyone who sends ?token=whk_", unsetVar)
	}
	if !strings.Contains(err.Error(), "{env."+unsetVar+"}") {
		t.Errorf("error does not name the placeholder: %v", err)
	}
}

// TestConfigErrorDuplicateName: two different relays with one name (two
// unnamed ones included) are an error asking for distinct names; the same
// relay served on two addresses is not.
func TestConfigErrorDuplicateName(t *testing.T) {
	name := relayName(t)
	for _, tc := range []struct {
		name, directives string
	}{
		{"same name", fmt.Sprintf(`
	webhook_relay /a http://127.0.0.1:9/a {
		name %[1]s
		store memory
	}
	webhook_relay /b http://127.0.0.1:9/b {
		name %[1]s
		store memory
	}`, name)},
		{"two unnamed", `
	webhook_relay /a http://127.0.0.1:9/a {
		store memory
	}
	webhook_relay /b http://127.0.0.1:9/b {
		store memory
	}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(t, site(tc.directives))
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), "give each its own name") {
				t.Errorf("error does not ask for distinct names: %v", err)
			}
		})
	}

	t.Run("same relay on two addresses", func(t *testing.T) {
		err := validate(t, fmt.Sprintf(`
:%d, :%d {
	webhook_relay /a http://127.0.0.1:9/a {
		name %s
		store memory
	}
}`, relayPort+10, relayPort+11, name))
		if err != nil {
			t.Errorf("one site block on two addresses (one handler per server, same settings): %v", err)
		}
	})
}

// TestConfigErrorMissingUpstream: no upstream is an error saying so.
// TestConfigErrorSameNameDifferentStores: two relays that differ only in
// their store are two relays, and may not share a name.
func TestConfigErrorSameNameDifferentStores(t *testing.T) {
	name := relayName(t)
	err := validate(t, site(fmt.Sprintf(`
	webhook_relay /a http://127.0.0.1:9/a {
		name %[1]s
		store memory
	}
	webhook_relay /b http://127.0.0.1:9/a {
		name %[1]s
		store bolt %[2]s
	}`, name, filepath.Join(t.TempDir(), "x.db"))))
	if err == nil || !strings.Contains(err.Error(), "give each its own name") {
		t.Fatalf("two relays named %q with different stores: got %v, want a distinct-names error", name, err)
	}
}

func TestConfigErrorMissingUpstream(t *testing.T) {
	err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in {
		name %s
		store memory
	}`, relayName(t))))
	if err == nil {
		t.Fatal("no error")
	}
	if !strings.Contains(err.Error(), "upstream is required") {
		t.Errorf("error does not say the upstream is missing: %v", err)
	}
}

// TestConfigErrorKeyReadsTheToken: a key source that reads an auth_query
// parameter would put the secret into the dedupe key, which is sent
// upstream, stored and shown by the admin API: a config error.
func TestConfigErrorKeyReadsTheToken(t *testing.T) {
	err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		auth_query token tok-s3cret
		key json.id query.token
		store memory
	}`, relayName(t))))
	if err == nil || !strings.Contains(err.Error(), "key query.token reads the auth_query parameter token") {
		t.Fatalf("key query.token with auth_query token: got %v, want an error saying the key reads the secret", err)
	}
	if strings.Contains(err.Error(), "tok-s3cret") {
		t.Errorf("error shows the secret: %v", err)
	}
}

// TestConfigErrorBadHeaderUp: a header_up name or value that no request may
// carry (a secret read with its trailing newline) fails the config, naming
// the header and not the value.
func TestConfigErrorBadHeaderUp(t *testing.T) {
	t.Setenv(setVar, "upstream-s3cret\n")
	for _, tc := range []struct{ name, line, want string }{
		{"value with a newline", fmt.Sprintf(`header_up Authorization "Bearer {env.%s}"`, setVar), "header_up Authorization: its value"},
		{"bad name", `header_up "X Bad" v`, `header_up "X Bad": not a valid header name`},
		// hop-by-hop: Go's client refuses or rewrites them, and every
		// attempt would fail as "unreachable", starting outage mode
		{"Connection", `header_up Connection close`, "header_up Connection: a hop-by-hop header"},
		{"Te", `header_up te trailers`, "header_up Te: a hop-by-hop header"},
		{"Upgrade", `header_up Upgrade websocket`, "header_up Upgrade: a hop-by-hop header"},
		{"Transfer-Encoding", `header_up Transfer-Encoding chunked`, "header_up Transfer-Encoding: a hop-by-hop header"},
		{"Keep-Alive", `header_up Keep-Alive timeout=5`, "header_up Keep-Alive: a hop-by-hop header"},
		{"Proxy-*", `header_up Proxy-Authorization "Basic x"`, "header_up Proxy-Authorization: a hop-by-hop header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		store memory
		%s
	}`, relayName(t), tc.line)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "upstream-s3cret") {
				t.Errorf("error shows the value: %v", err)
			}
		})
	}
}

// TestConfigErrorForwardHeaders: forward_headers may not name a header the
// relay writes itself, nor something that is no header name; a
// sign_upstream secret must be a Standard Webhooks one.
func TestConfigErrorForwardHeaders(t *testing.T) {
	for _, tc := range []struct{ name, line, want string }{
		{"relay's own header", "forward_headers X-Trace Idempotency-Key", "forward_headers Idempotency-Key: the relay sets this header itself"},
		{"hop-by-hop", "forward_headers connection", "forward_headers connection: the relay sets this header itself"},
		{"bad name", `forward_headers "X Trace"`, `forward_headers "X Trace": not a valid header name`},
		// credentials would be stored and shown in the console
		{"Authorization", "forward_headers X-Trace authorization", "forward_headers authorization: it carries credentials"},
		{"Cookie", "forward_headers Cookie", "forward_headers Cookie: it carries credentials"},
		{"key Authorization", "key header.Authorization", "key header.Authorization reads credentials"},
		{"key Cookie", "key json.id header.cookie", "key header.cookie reads credentials"},
		{"sign_upstream not whsec", "sign_upstream not-base64!", `sign_upstream: want "whsec_"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		store memory
		%s
	}`, relayName(t), tc.line)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
