package command

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/hookrelay/caddy-webhook-relay/ops"
)

// fakeAdmin answers the admin API's routes of relay "main" as canned.
func fakeAdmin(t *testing.T, overviewStatus int) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answer := func(status int, body string) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		}
		switch r.Method + " " + r.URL.Path {
		case "GET /webhook_relay/":
			answer(overviewStatus, `[{"name":"main","requests":{},"deliveries":{}}]`)
		case "GET /webhook_relay/main/dead/broken", "DELETE /webhook_relay/main/dead/broken":
			answer(500, `{"error":"boom"}`)
		case "DELETE /webhook_relay/main/dead/forbidden":
			answer(403, `{"error":"host not allowed"}`)
		case "GET /webhook_relay/main/dead/gone", "DELETE /webhook_relay/main/dead/gone":
			answer(404, `{"error":"no dead letter with id \"gone\""}`)
		case "GET /webhook_relay/main/dead/hostile":
			b, _ := json.Marshal(hostileLetter())
			answer(200, string(b))
		case "GET /webhook_relay/main/dead":
			b, _ := json.Marshal(ops.DeadPage{Entries: []ops.DeadLetter{*hostileLetter()}})
			answer(200, string(b))
		case "GET /webhook_relay/main/dead/big":
			b, _ := json.Marshal(bigLetter())
			answer(200, string(b))
		default:
			answer(404, `{"error":"unknown route"}`)
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func flags(t *testing.T, address string, args ...string) caddycmd.Flags {
	t.Helper()
	cmd := &cobra.Command{Use: "webhook-relay"}
	selectionFlags(cmd, "Act on")
	fs := cmd.Flags()
	fs.String("address", address, "")
	fs.String("config", "", "")
	fs.String("adapter", "", "")
	fs.Bool("json", false, "")
	fs.Bool("body", false, "")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return caddycmd.Flags{FlagSet: fs}
}

// TestErrorsAreReportedAsWhatTheyAre: only a 404 of a dead letter's route
// means the dead letter is missing; any other error status is reported as
// itself.
func TestErrorsAreReportedAsWhatTheyAre(t *testing.T) {
	addr := fakeAdmin(t, 200)
	for _, c := range []struct {
		name    string
		run     func(caddycmd.Flags) (int, error)
		args    []string
		want    string
		notWant string
	}{
		{"show, 500", cmdDead, []string{"main", "show", "broken"}, "HTTP 500: boom", "has no dead letter"},
		{"delete, 500", cmdDelete, []string{"main", "broken"}, "HTTP 500: boom", "no dead letter"},
		{"delete, 403", cmdDelete, []string{"main", "forbidden"}, "HTTP 403: host not allowed", "no dead letter"},
		{"show, 404", cmdDead, []string{"main", "show", "gone"}, `relay main has no dead letter "gone"`, "HTTP"},
		{"delete, 404", cmdDelete, []string{"main", "gone"}, `relay main has no dead letter "gone"`, "HTTP"},
		{"unknown relay", cmdDelete, []string{"other", "1"}, `no relay named "other"`, "HTTP"},
	} {
		code, err := c.run(flags(t, addr, c.args...))
		if code != exitError || err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), c.notWant) {
			t.Errorf("%s: exit %d, %v; want %d saying %q, not %q", c.name, code, err, exitError, c.want, c.notWant)
		}
	}
}

func TestOverviewErrors(t *testing.T) {
	code, err := cmdRelayStatus(flags(t, fakeAdmin(t, 500)))
	if code != exitError || err == nil || !strings.Contains(err.Error(), "HTTP 500") {
		t.Errorf("status with a 500: exit %d, %v", code, err)
	}
	code, err = cmdRelayStatus(flags(t, fakeAdmin(t, 404)))
	if code != exitError || err == nil || !strings.Contains(err.Error(), "no webhook_relay admin API") {
		t.Errorf("status with the route missing: exit %d, %v", code, err)
	}
}

// TestStatusTable: status prints the stored bytes as a size, next to the
// dead letters, and "?" where the relay's store could not be read.
func TestStatusTable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`[{"name":"main","upstream_host":"app.example","dead_letters":2,"stored_bytes":12582912,"max_stored":2147483648,` +
			`"requests":{"accepted":2,"ignored":4,"challenge":1,"unauthorized":3,"too_large":1},"deliveries":{"dead":2}},` +
			`{"name":"down","upstream_host":"app.example","error":"store unreachable","requests":{},"deliveries":{}}]`))
	}))
	t.Cleanup(srv.Close)
	out := captureStdout(t)
	code, err := cmdRelayStatus(flags(t, strings.TrimPrefix(srv.URL, "http://")))
	if code != exitError || err == nil || !strings.Contains(err.Error(), "store unreachable") {
		t.Errorf("status with a relay down: exit %d, %v; want %d naming the error", code, err, exitError)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("status printed %d lines, want a header and 2 rows:\n%s", len(lines), out)
	}
	head := strings.Fields(lines[0])
	for i, want := range map[int]string{1: "main", 2: "down"} {
		row := strings.Fields(lines[i])
		if len(row) != len(head) {
			t.Fatalf("row %q has %d fields, the header %d", lines[i], len(row), len(head))
		}
		cols := map[string]string{}
		for j, h := range head {
			cols[h] = row[j]
		}
		stored := map[string]string{"main": "12MiB", "down": "?"}[want]
		if cols["RELAY"] != want || cols["STORED"] != stored {
			t.Errorf("row %d: RELAY %q, STORED %q; want %q, %q\n%s", i, cols["RELAY"], cols["STORED"], want, stored, out)
		}
		// answered 200 without storing (ignored, challenge) is no refusal
		refused := map[string]string{"main": "4", "down": "0"}[want]
		if cols["REFUSED"] != refused {
			t.Errorf("row %d: REFUSED %q, want %q (unauthorized and too_large only)\n%s", i, cols["REFUSED"], refused, out)
		}
	}
}

func TestSizeText(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 900: "900B", 1536: "1.5KiB", 12 << 20: "12MiB", 2 << 30: "2GiB", -1: "0B"} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q, want %q", n, got, want)
		}
	}
}

// hostileBody is what a sender may post: escape sequences that colour,
// clear the screen, and write the clipboard (OSC 52), a C1 CSI, a bidi
// override.
const hostileBody = "{\"id\":\"evt\"}\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b[31mred\u009b1m\u202eevil"

func hostileLetter() *ops.DeadLetter {
	body := hostileBody
	return &ops.DeadLetter{ID: "hostile", Key: "k\x1b[2Jey", LastStatus: 400, LastError: "upstream said \u009b31m no",
		BodySize: len(body), Body: &body, Request: &ops.KeptRequest{UserAgent: "ua\x1b]0;title\x07", Query: "a=\u202e1"}}
}

// bigLetter is a dead letter of 32 MiB (DefaultMaxBody) whose JSON is
// twice that, each '"' escaped: past the 64 MiB the client used to read.
func bigLetter() *ops.DeadLetter {
	body := strings.Repeat(`"`, 32<<20)
	return &ops.DeadLetter{ID: "big", Key: "k", BodySize: len(body), Body: &body}
}

// captureStdout sends what the commands print to a buffer while the test
// runs.
func captureStdout(t *testing.T) *bytes.Buffer {
	var buf bytes.Buffer
	old := stdout
	stdout = &buf
	t.Cleanup(func() { stdout = old })
	return &buf
}

// TestShowEscapesControlCharacters: dead show (and the list, and --json)
// print a sender's control characters escaped; --body prints the body
// byte for byte.
func TestShowEscapesControlCharacters(t *testing.T) {
	addr := fakeAdmin(t, 200)
	raw := func(out string) []string {
		var found []string
		for _, c := range []string{"\x1b", "\x07", "\u009b", "\u202e"} {
			if strings.Contains(out, c) {
				found = append(found, fmt.Sprintf("%q", c))
			}
		}
		return found
	}
	for _, args := range [][]string{{"main", "show", "hostile"}, {"main", "show", "hostile", "--json"}, {"main"}, {"main", "--json"}} {
		out := captureStdout(t)
		if code, err := cmdDead(flags(t, addr, args...)); code != exitOK {
			t.Fatalf("dead %s: exit %d, %v", strings.Join(args, " "), code, err)
		}
		if found := raw(out.String()); len(found) > 0 {
			t.Errorf("dead %s printed %s raw:\n%q", strings.Join(args, " "), found, out)
		}
		if len(args) == 3 && !strings.Contains(out.String(), `\x1b]52;c;ZXZpbA==\x07`) {
			t.Errorf("dead show does not show the escape sequence escaped:\n%s", out)
		}
	}
	out := captureStdout(t)
	if code, err := cmdDead(flags(t, addr, "main", "show", "hostile", "--body")); code != exitOK || out.String() != hostileBody {
		t.Errorf("dead show --body: exit %d, %v, printed %q, want the body as it is", code, err, out)
	}
}

// TestShowsA32MiBDeadLetter: a dead letter as large as max_body's default
// is shown, though its JSON is larger than 64 MiB.
func TestShowsA32MiBDeadLetter(t *testing.T) {
	out := captureStdout(t)
	code, err := cmdDead(flags(t, fakeAdmin(t, 200), "main", "show", "big", "--body"))
	if code != exitOK || out.Len() != 32<<20 {
		t.Fatalf("dead show of a 32 MiB letter: exit %d, %v, %d bytes printed", code, err, out.Len())
	}
}

// TestSelection: replay and delete act on --all, the ids named, or the
// match flags, exactly one of them; a match flag that cannot be sent is a
// usage error, before the admin API is asked anything.
func TestSelection(t *testing.T) {
	status := func(n int) *int { return &n }
	for _, c := range []struct {
		args []string
		want ops.Selection
		says string // a usage error's
	}{
		{args: []string{"main", "--all"}, want: ops.Selection{All: true}},
		{args: []string{"main", "a", "b"}, want: ops.Selection{IDs: []string{"a", "b"}}},
		{args: []string{"main", "--match-status", "0"}, want: ops.Selection{Match: &ops.Match{Status: status(0)}}},
		{args: []string{"main", "--match-status", "500", "--match-key", "task-", "--match-destination", "archive",
			"--since", "2026-12-06T20:00:00Z", "--until", "2026-12-06T21:00:00+01:00"},
			want: ops.Selection{Match: &ops.Match{Status: status(500), Key: "task-", Destination: "archive",
				Since: "2026-12-06T20:00:00Z", Until: "2026-12-06T21:00:00+01:00"}}},
		{args: []string{}, says: "name the relay"},
		{args: []string{"main"}, says: "name the dead letters to replay, --all, or match them"},
		{args: []string{"main", "--all", "a"}, says: "one of them"},
		{args: []string{"main", "--all", "--match-key", "x"}, says: "one of them"},
		{args: []string{"main", "a", "--match-key", "x"}, says: "one of them"},
		{args: []string{"main", "--match-status", "5xx"}, says: `--match-status "5xx": want a status code`},
		{args: []string{"main", "--match-status", "-1"}, says: `--match-status "-1"`},
		{args: []string{"main", "--since", "yesterday"}, says: `--since "yesterday": want an RFC 3339 time`},
		{args: []string{"main", "--match-key", "x", "--until", "2026-12-06"}, says: `--until "2026-12-06"`},
	} {
		got, code, err := selection(flags(t, "", c.args...), "replay")
		if c.says != "" {
			if code != exitUsage || err == nil || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "--help") {
				t.Errorf("replay %q: exit %d, %v; want usage (%d) saying %q", c.args, code, err, exitUsage, c.says)
			}
			continue
		}
		if code != exitOK || err != nil {
			t.Errorf("replay %q: exit %d, %v", c.args, code, err)
			continue
		}
		gotJSON, _ := json.Marshal(got)
		wantJSON, _ := json.Marshal(c.want)
		if !bytes.Equal(gotJSON, wantJSON) {
			t.Errorf("replay %q selects %s, want %s", c.args, gotJSON, wantJSON)
		}
	}
}
