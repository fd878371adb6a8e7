package caddytest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddytester "github.com/caddyserver/caddy/v2/caddytest"
)

// TestCaddyfileAdaptToJSON adapts every caddyfile_adapt/*.caddyfiletest
// (a Caddyfile, a line of ten dashes, the expected JSON) and compares, as
// Caddy's own caddyfile_adapt_test.go does.
func TestCaddyfileAdaptToJSON(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("caddyfile_adapt", "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no caddyfile_adapt/*.caddyfiletest files")
	}
	winNewlines := regexp.MustCompile(`\r?\n`)
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			caddyfile, expected, ok := strings.Cut(winNewlines.ReplaceAllString(string(data), "\n"), "----------")
			if !ok {
				t.Fatalf("%s: no ---------- line between the Caddyfile and the JSON", file)
			}
			caddyfile, expected = strings.TrimSpace(caddyfile)+"\n", strings.TrimSpace(expected)
			if !caddytester.CompareAdapt(t, file, caddyfile, "caddyfile", expected) {
				t.Errorf("adapting %s does not give the JSON below the dashes (diff on stdout)", file)
			}
		})
	}
}

// TestCaddyfileParseErrors: the parser is strict, and each error says what
// is wrong.
func TestCaddyfileParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		block string // inside webhook_relay http://127.0.0.1:3000/hook { ... } unless it starts with "webhook_relay"
		want  []string
	}{
		{"upstream without URL", "webhook_relay {\n\t\tupstream\n\t}", []string{"wrong argument count", "'upstream'"}},
		{"upstream inline and in the block", "upstream http://127.0.0.1:3001/other", []string{"upstream given twice"}},
		{"two inline upstreams", "webhook_relay http://127.0.0.1:3000/a http://127.0.0.1:3000/b", []string{"wrong argument count"}},
		{"unknown subdirective", "retries 5", []string{"unrecognized webhook_relay subdirective 'retries'"}},
		{"repeated window", "window 1h\n\t\twindow 2h", []string{"'window' given twice"}},
		{"repeated name", "name a\n\t\tname b", []string{"'name' given twice"}},
		{"repeated auth_query param", "auth_query token {env.A}\n\t\tauth_query token {env.B}", []string{"auth_query token given twice"}},
		{"auth_query without secret", "auth_query token", []string{"auth_query token", "at least one secret"}},
		{"auth_query without param", "auth_query", []string{"wrong argument count", "'auth_query'"}},
		{"auth_header without field", "auth_header", []string{"wrong argument count", "'auth_header'"}},
		{"auth_header without value", "auth_header X-Token", []string{"auth_header X-Token", "at least one value"}},
		{"repeated auth_header field", "auth_header X-Token {env.A}\n\t\tauth_header X-Token {env.B}", []string{"auth_header X-Token given twice"}},
		{"auth_basic without user", "auth_basic", []string{"wrong argument count", "'auth_basic'"}},
		{"auth_basic without password", "auth_basic deepgram", []string{"auth_basic deepgram", "at least one password"}},
		{"repeated auth_basic user", "auth_basic dg {env.A}\n\t\tauth_basic dg {env.B}", []string{"auth_basic dg given twice"}},
		{"bad duration", "window forever", []string{"window", "bad duration 'forever'"}},
		{"zero duration", "timeout 0s", []string{"timeout", "bad duration '0s'"}},
		{"bad give_up_after", "give_up_after -1h", []string{"give_up_after", "bad duration '-1h'"}},
		{"bad size", "max_body lots", []string{"max_body", "bad size 'lots'"}},
		{"zero size", "max_body 0", []string{"max_body", "bad size '0'"}},
		{"bad integer", "max_backlog many", []string{"max_backlog", "positive whole number", "'many'"}},
		{"zero concurrency", "concurrency 0", []string{"concurrency", "positive whole number", "'0'"}},
		{"negative concurrency", "concurrency -4", []string{"concurrency", "positive whole number", "'-4'"}},
		{"backoff with one arg", "backoff 10ms", []string{"wrong argument count"}},
		{"backoff with three args", "backoff 10ms 1s 2s", []string{"wrong argument count"}},
		{"backoff bad duration", "backoff 10ms soon", []string{"backoff", "bad duration 'soon'"}},
		{"unknown store type", "store disk", []string{"unknown store 'disk'"}},
		{"store without type", "store", []string{"wrong argument count", "'store'"}},
		{"store memory extra", "store memory extra", []string{"wrong argument count", "'extra'"}},
		{"store memory with options", "store memory {\n\t\t\tsize 1\n\t\t}", []string{"store memory takes no options"}},
		{"header_up without value", "header_up X-Only-Name", []string{"wrong argument count"}},
		{"key without source", "key", []string{"wrong argument count", "'key'"}},
		{"window with two args", "window 1h 2h", []string{"wrong argument count"}},
		{"bad max_memory", "max_memory plenty", []string{"max_memory", "bad size 'plenty'"}},
		{"max_memory without size", "max_memory", []string{"wrong argument count", "'max_memory'"}},
		{"repeated max_memory", "max_memory 1GiB\n\t\tmax_memory 2GiB", []string{"'max_memory' given twice"}},
		{"bad max_stored", "max_stored huge", []string{"max_stored", "bad size 'huge'", "2GiB"}},
		{"zero max_stored", "max_stored 0", []string{"max_stored", "bad size '0'"}},
		{"max_stored without size", "max_stored", []string{"wrong argument count", "'max_stored'"}},
		{"max_stored with two sizes", "max_stored 1GiB 2GiB", []string{"wrong argument count"}},
		{"repeated max_stored", "max_stored 1GiB\n\t\tmax_stored 2GiB", []string{"'max_stored' given twice"}},
		{"bad body_timeout", "body_timeout never", []string{"body_timeout", "bad duration 'never'"}},
		{"zero max_dead", "max_dead 0", []string{"max_dead", "positive whole number", "'0'"}},
		{"bad dead_retention", "dead_retention soon", []string{"dead_retention", "bad duration 'soon'"}},
		{"verify without scheme", "verify", []string{"verify: name a scheme", "stripe"}},
		{"verify without secret", "verify stripe", []string{"verify stripe", "at least one secret"}},
		{"verify hmac secret inline", "verify hmac {env.S}", []string{"verify hmac", "in its block"}},
		{"verify unknown option", "verify stripe {env.S} {\n\t\t\theader X\n\t\t}", []string{"verify stripe", "unrecognized option 'header'"}},
		{"verify meta unknown option", "verify meta {env.S} {\n\t\t\tverify_tokn X\n\t\t}", []string{"verify meta", "unrecognized option 'verify_tokn'", "use verify_token"}},
		{"verify hmac unknown option", "verify hmac {\n\t\t\ttolerance 1m\n\t\t}", []string{"verify hmac", "unrecognized option 'tolerance'"}},
		{"verify bad tolerance", "verify slack {env.S} {\n\t\t\ttolerance soon\n\t\t}", []string{"tolerance", "bad duration 'soon'"}},
		{"repeated verify", "verify github {env.A}\n\t\tverify github {env.B}", []string{"'verify' given twice"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			directive := tc.block
			if !strings.HasPrefix(directive, "webhook_relay") {
				directive = "webhook_relay http://127.0.0.1:3000/hook {\n\t\t" + tc.block + "\n\t}"
			}
			caddyfile := ":8080 {\n\t" + directive + "\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
			if err == nil {
				t.Fatalf("no error adapting\n%s", caddyfile)
			}
			msg := err.Error()
			for _, want := range tc.want {
				if !strings.Contains(strings.ToLower(msg), strings.ToLower(want)) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			if !strings.Contains(msg, "Caddyfile:") {
				t.Errorf("error %q does not say where (Caddyfile:<line>)", msg)
			}
		})
	}
}
