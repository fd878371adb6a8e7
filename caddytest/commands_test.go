package caddytest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// buildCaddy builds ./cmd/caddy, the Caddy with this module, into the
// test's temporary directory.
func buildCaddy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "caddy")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/caddy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ../cmd/caddy: %v\n%s", err, out)
	}
	return bin
}

// ran is one run of the built binary.
type ran struct {
	args           []string
	code           int
	stdout, stderr string
}

func (r ran) String() string {
	return fmt.Sprintf("caddy %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, indent(r.stdout), indent(r.stderr))
}

// commandRunner runs the built binary with the environment of the test,
// CADDY_ADMIN cleared unless env sets it.
type commandRunner struct {
	t   *testing.T
	bin string
}

func (c commandRunner) run(env []string, args ...string) ran {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "CADDY_ADMIN=") }), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := ran{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		c.t.Fatalf("running caddy %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// admin runs a webhook-relay subcommand against the test Caddy.
func (c commandRunner) admin(args ...string) ran {
	c.t.Helper()
	return c.run(nil, append(append([]string{"webhook-relay"}, args...), "--address", adminAddr)...)
}

// expect checks the exit code and that stderr (for errors) or stdout
// holds every string in says.
func expect(t *testing.T, r ran, code int, says ...string) {
	t.Helper()
	out := r.stdout
	if code != 0 {
		out = logged(r.stderr)
	}
	if r.code != code {
		t.Errorf("exit %d, want %d\n%s", r.code, code, r)
		return
	}
	for _, s := range says {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q\n%s", s, r)
		}
	}
}

// logged is the text of what a command logged: Caddy's CLI reports errors
// through its log, as JSON lines when stderr is no terminal.
func logged(stderr string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		var entry struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg != "" {
			line = entry.Msg
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// table reads a table the commands print: a header line, then rows of
// fields separated by spaces, as maps from column to value.
func table(t *testing.T, out string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	head := strings.Fields(lines[0])
	var rows []map[string]string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < len(head)-1 {
			t.Fatalf("row %q has %d fields, the header %d:\n%s", l, len(f), len(head), out)
		}
		row := map[string]string{}
		for i, h := range head {
			switch {
			case h == "ERROR": // may hold spaces: what is between STATUS and KEY
				row[h] = strings.Join(f[i:len(f)-1], " ")
			case h == "KEY":
				row[h] = f[len(f)-1]
			default:
				row[h] = f[i]
			}
		}
		rows = append(rows, row)
	}
	return rows
}

func rowOf(rows []map[string]string, col, value string) map[string]string {
	for _, r := range rows {
		if r[col] == value {
			return r
		}
	}
	return nil
}

// TestCommands runs `caddy webhook-relay ...`, built from ./cmd/caddy,
// against the test Caddy: status, listing (paged past the admin API's
// page), showing, replaying and deleting dead letters, with the exit codes
// and messages of every error.
func TestCommands(t *testing.T) {
	c := commandRunner{t: t, bin: buildCaddy(t)}
	secrets := testkit.ConsoleSecrets(t)
	app := newConsoleApp(t)
	main, bulk := relayName(t, "main"), relayName(t, "bulk")
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %[1]s/hook
		name %[2]s
		store memory
		auth_query token {env.CONSOLE_TEST_TOKEN}
	}
	webhook_relay /bulk {
		upstream %[1]s/hook
		name %[3]s
		store memory
		key json.n
	}`, app.URL, main, bulk)))
	in := relayURL("/in", "token="+secrets[0]+"&source=cli")

	// this run's own payloads and totals: a relay's dedupe state and
	// counters outlive a test (go test -count=2)
	run := payloadSeq.Add(1)
	uuid := func(n int64) string { return fmt.Sprintf("7a1e0c52-c11a-4b0e-9d1a-%012x", run*16+n) }
	base := map[string]*opsRelayStatus{main: opsOverview(t, main), bulk: opsOverview(t, bulk)}
	total := func(counts map[string]int64, key string, delta int64) string {
		if key == "refused" { // what the table sums as REFUSED
			for k, n := range counts {
				if k != "accepted" && k != "duplicate" {
					delta += n
				}
			}
			return fmt.Sprint(delta)
		}
		return fmt.Sprint(counts[key] + delta)
	}
	pic := testkit.PNG(t, 8, 8)
	withImage := testkit.RunwareResult(uuid(1), uuid(2), `"imageBase64Data":"`+base64.StdEncoding.EncodeToString(pic)+`"`)
	refusedError := []byte(`{"errors":[{"code":"invalidSeed","taskUUID":"` + uuid(3) + `"}]}`)
	withDataURI := testkit.RunwareResult(uuid(4), uuid(5), `"imageDataURI":"data:image/png;base64,AAAA"`)
	fine := testkit.RunwareResult(uuid(6), uuid(7))
	for _, b := range [][]byte{withImage, refusedError, withDataURI, fine} {
		mustAccept(t, in, b)
	}
	expectStatus(t, post(t, in, fine), http.StatusOK, "duplicate")
	expectStatus(t, post(t, relayURL("/in", "token=wrong"), fine), http.StatusUnauthorized, "")
	// more dead letters than one page of the admin API holds
	const many = 1001
	for i := range many {
		mustAccept(t, relayURL("/bulk", ""), fmt.Appendf(nil, `{"n":"%d-%d","errors":[{"code":"x"}]}`, run, i))
	}
	app.waitDelivered(t, fine)
	opsWaitOverview(t, main, "3 dead letters", func(s *opsRelayStatus) bool { return intOf(s.DeadLetters) == 3 && intOf(s.Backlog) == 0 })
	opsWaitOverview(t, bulk, fmt.Sprint(many, " dead letters"), func(s *opsRelayStatus) bool {
		return intOf(s.DeadLetters) == many && intOf(s.Backlog) == 0
	})
	ids := map[string]string{}
	for _, e := range opsListDead(t, main, "").Entries {
		d, _ := opsGetDead(t, main, e.ID)
		for which, b := range map[string][]byte{"image": withImage, "error": refusedError, "datauri": withDataURI} {
			if ptrString(d.Body) == string(b) {
				ids[which] = e.ID
			}
		}
	}
	if len(ids) != 3 {
		t.Fatalf("dead letters by body: %v", ids)
	}

	t.Run("status", func(t *testing.T) {
		r := c.admin("status")
		expect(t, r, 0, "RELAY", "BACKLOG", "IN-FLIGHT", "DEAD", "STORED", "OLDEST", "UPSTREAM")
		row := rowOf(table(t, r.stdout), "RELAY", main)
		b := base[main]
		want := map[string]string{"BACKLOG": "0", "IN-FLIGHT": "0", "DEAD": "3", "OLDEST": "-",
			"ACCEPTED": total(b.Requests, "accepted", 4), "DUPLICATE": total(b.Requests, "duplicate", 1),
			"REFUSED": total(b.Requests, "refused", 1), "DELIVERED": total(b.Deliveries, "success", 1),
			"RETRIES": total(b.Deliveries, "retry", 0), "DIED": total(b.Deliveries, "dead", 3), "UPSTREAM": app.Addr}
		for col, v := range want {
			if row[col] != v {
				t.Errorf("%s: %s = %q, want %q\n%s", main, col, row[col], v, r)
			}
		}
		// STORED is the overview's stored_bytes (its 3 dead letters), as a
		// size: rounded to 2 or 3 digits
		stored := opsOverview(t, main).StoredBytes
		printed, err := humanize.ParseBytes(row["STORED"])
		if stored <= 0 || err != nil || !strings.HasSuffix(row["STORED"], "B") || math.Abs(float64(printed)-float64(stored)) > 0.05*float64(stored) {
			t.Errorf("%s: STORED = %q (%v), want about stored_bytes %d\n%s", main, row["STORED"], err, stored, r)
		}
		if row := rowOf(table(t, r.stdout), "RELAY", bulk); row["DEAD"] != fmt.Sprint(many) || row["ACCEPTED"] != total(base[bulk].Requests, "accepted", many) {
			t.Errorf("%s: %v", bulk, row)
		}

		r = c.admin("status", "--json")
		expect(t, r, 0)
		var relays []opsRelayStatus
		if err := json.Unmarshal([]byte(r.stdout), &relays); err != nil {
			t.Fatalf("status --json is not the admin API's JSON: %v\n%s", err, r)
		}
		i := slices.IndexFunc(relays, func(s opsRelayStatus) bool { return s.Name == main })
		if i < 0 || intOf(relays[i].DeadLetters) != 3 || relays[i].Requests["accepted"] != base[main].Requests["accepted"]+4 {
			t.Errorf("status --json: %s", r.stdout)
		}
	})

	t.Run("finding the admin endpoint", func(t *testing.T) {
		// as caddy reload does: $CADDY_ADMIN, or the config file's admin address
		expect(t, c.run([]string{"CADDY_ADMIN=" + adminAddr}, "webhook-relay", "status"), 0, main)
		dir := t.TempDir()
		cfg := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(cfg, []byte("{\n\tadmin "+adminAddr+"\n}\n:1 {\n\trespond 1\n}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		expect(t, c.run(nil, "webhook-relay", "status", "--config", cfg), 0, main)
		expect(t, c.run(nil, "webhook-relay", "dead", main, "-c", cfg), 0, ids["image"])
	})

	t.Run("dead", func(t *testing.T) {
		r := c.admin("dead", main)
		expect(t, r, 0, "ID", "AGE", "ATTEMPTS", "STATUS", "ERROR", "KEY")
		rows := table(t, r.stdout)
		if len(rows) != 3 {
			t.Fatalf("%d dead letters listed, want 3\n%s", len(rows), r)
		}
		for which, status := range map[string]string{"image": "422", "error": "400", "datauri": "422"} {
			row := rowOf(rows, "ID", ids[which])
			if row == nil || row["STATUS"] != status || row["ATTEMPTS"] != "1" || !strings.Contains(row["ERROR"], "answered "+status) {
				t.Errorf("%s: row %v, want status %s and its error\n%s", which, row, status, r)
			}
			if row != nil && (row["KEY"] == "" || !strings.HasSuffix(row["AGE"], "s")) {
				t.Errorf("%s: key %q, age %q", which, row["KEY"], row["AGE"])
			}
		}

		// past one page of the admin API: every one, in order, once
		r = c.admin("dead", bulk)
		expect(t, r, 0)
		var got []string
		for _, row := range table(t, r.stdout) {
			got = append(got, row["ID"])
		}
		var want []string
		for after := ""; ; {
			q := "limit=1000"
			if after != "" {
				q += "&after=" + after
			}
			p := opsListDead(t, bulk, q)
			for _, e := range p.Entries {
				want = append(want, e.ID)
			}
			if after = p.Next; after == "" {
				break
			}
		}
		if len(want) != many || !slices.Equal(got, want) {
			t.Errorf("dead %s lists %d ids, the admin API %d (want %d, the same, in order)", bulk, len(got), len(want), many)
		}
		r = c.admin("dead", bulk, "--json")
		var entries []opsDeadLetter
		if err := json.Unmarshal([]byte(r.stdout), &entries); err != nil || len(entries) != many {
			t.Errorf("dead --json: %d entries (%v), want %d", len(entries), err, many)
		}
	})

	t.Run("show", func(t *testing.T) {
		r := c.admin("dead", main, "show", ids["image"])
		expect(t, r, 0, "id             "+ids["image"], "last status    422", "last error     upstream answered 422",
			"content type   application/json", "query          source=cli", `"taskType": "imageInference"`, `"imageBase64Data": "`)
		for _, s := range secrets {
			if strings.Contains(r.stdout, s) {
				t.Errorf("show prints the secret %q", s)
			}
		}
		r = c.admin("dead", main, "show", ids["image"], "--body")
		expect(t, r, 0)
		if r.stdout != string(withImage) {
			t.Errorf("show --body printed %q, want the body as received %q", r.stdout, withImage)
		}
		r = c.admin("dead", main, "show", ids["error"], "--json")
		var d opsDeadLetter
		if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || ptrString(d.Body) != string(refusedError) || d.LastStatus != 400 {
			t.Errorf("show --json: %v\n%s", err, r)
		}
	})

	t.Run("events", func(t *testing.T) {
		r := c.admin("events", main, "--key", uuid(6))
		expect(t, r, 0, "ID", "AGE", "STATE", "DESTINATIONS", "LAST", "KEY")
		row := rowOf(table(t, r.stdout), "STATE", "delivered")
		if row == nil || row["DESTINATIONS"] != "upstream:delivered/1" || row["LAST"] != "200" || !strings.Contains(row["KEY"], uuid(7)) {
			t.Fatalf("events --key: row %v, want the delivered result\n%s", row, r)
		}
		r = c.admin("events", main, "show", row["ID"])
		expect(t, r, 0, "state      delivered", "DESTINATION", "ATTEMPT AT", "upstream     200", `"imageUUID": "`+uuid(7)+`"`)
		r = c.admin("events", main, "--state", "dead")
		expect(t, r, 0, "upstream:dead/1")
		if n := len(table(t, r.stdout)); n != 3 {
			t.Errorf("events --state dead: %d rows, want the 3 dead letters' payloads\n%s", n, r)
		}
		expect(t, c.admin("events", main, "--state", "done"), 1, "want queued, retrying, delivered or dead")
		expect(t, c.admin("events", main, "show", "00000000000000099999"), 1, `relay `+main+` has no payload "00000000000000099999"`)
		expect(t, c.admin("events", main), 0, row["ID"])
		expect(t, c.admin("events", main, "resend", row["ID"]), 0, "resent "+row["ID"]+" to 1 destination")
		app.waitFor(t, "the resent result", func(hits []*hit) bool { return len(withBody(hits, fine)) == 2 })
	})

	t.Run("usage errors exit 2", func(t *testing.T) {
		for _, args := range [][]string{
			{}, {"bogus"}, {"status", "extra"}, {"status", "--bogus"}, {"dead"}, {"dead", main, "show"},
			{"dead", main, "show", "a", "b"}, {"dead", main, "list"}, {"dead", main, "--body"},
			{"dead", main, "show", ids["image"], "--body", "--json"}, {"replay"}, {"replay", main},
			{"replay", main, "--all", ids["image"]}, {"delete"}, {"delete", main}, {"delete", main, "--all", ids["image"]},
			{"replay", main, "--match-status", "4xx"}, {"replay", main, "--all", "--match-status", "422"},
			{"delete", main, ids["image"], "--match-key", "x"}, {"delete", main, "--since", "yesterday"},
			{"replay", main, "--match-key", "x", "--until", "2026-12-06 20:00"},
			{"events"}, {"events", main, "show"}, {"events", main, "list"}, {"events", main, "resend", "a", "b"},
		} {
			r := c.admin(args...)
			expect(t, r, 2, "--help")
		}
		if s := opsOverview(t, main); intOf(s.DeadLetters) != 3 {
			t.Fatalf("usage errors changed the dead letters: %d", intOf(s.DeadLetters))
		}
	})

	t.Run("help", func(t *testing.T) {
		for _, sub := range []string{"", "status", "events", "dead", "replay", "delete"} {
			args := []string{"webhook-relay", sub, "--help"}
			if sub == "" {
				args = []string{"webhook-relay", "--help"}
			}
			expect(t, c.run(nil, args...), 0, "Exit status:", "  2  usage", "--address")
		}
		expect(t, c.run(nil, "help"), 0, "webhook-relay")
	})

	t.Run("errors exit 1", func(t *testing.T) {
		nowhere := freeAddr(t)
		r := c.run(nil, "webhook-relay", "status", "--address", nowhere)
		expect(t, r, 1, "cannot reach Caddy's admin endpoint at "+nowhere, "is Caddy running?", "--address")
		expect(t, c.run(nil, "webhook-relay", "status", "--address", app.Addr), 1, "webhook_relay")
		expect(t, c.admin("dead", "no-such-relay"), 1, `no relay named "no-such-relay"`, main, bulk, "webhook-relay status")
		expect(t, c.admin("replay", "no-such-relay", "--all"), 1, `no relay named "no-such-relay"`)
		expect(t, c.admin("delete", "no-such-relay", "1"), 1, `no relay named "no-such-relay"`)
		expect(t, c.admin("dead", main, "show", "00000000000000099999"), 1, `relay `+main+` has no dead letter "00000000000000099999"`, "webhook-relay dead "+main)
		expect(t, c.admin("replay", main, "00000000000000099999"), 1, `no dead letter "00000000000000099999"`)
		expect(t, c.admin("delete", main, "00000000000000099999"), 1, `no dead letter "00000000000000099999"`)
		if s := opsOverview(t, main); intOf(s.DeadLetters) != 3 {
			t.Fatalf("failed commands changed the dead letters: %d", intOf(s.DeadLetters))
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	app.fixed.Store(true)
	t.Run("replay and delete", func(t *testing.T) {
		// one known id and one unknown: the known one still goes back
		r := c.admin("replay", main, ids["image"], "00000000000000099998")
		expect(t, r, 1, `no dead letter "00000000000000099998"`)
		if r.stdout != "replayed "+ids["image"]+"\n" {
			t.Errorf("stdout %q, want the replayed id\n%s", r.stdout, r)
		}
		hits := app.waitDelivered(t, withImage)
		if last := hits[len(hits)-1]; last.Attempt != 1 {
			t.Errorf("the replay is attempt %d, want 1 (attempts reset)", last.Attempt)
		}

		expect(t, c.admin("delete", main, ids["error"]), 0, "deleted "+ids["error"])
		expect(t, c.admin("delete", main, ids["error"]), 1, `no dead letter "`+ids["error"]+`"`)
		expect(t, c.admin("dead", main, "show", ids["error"]), 1, "has no dead letter")

		// by match: of the 422s, only the datauri one is still dead
		expect(t, c.admin("replay", main, "--match-status", "422", "--match-key", "rw:", "--match-destination", "upstream"), 0,
			"replayed 1 dead letters of "+main+` matching destination "upstream", status 422, key containing "rw:"`)
		app.waitDelivered(t, withDataURI)
		expect(t, c.admin("replay", main, "--match-status", "422"), 0, "replayed 0 dead letters of "+main)
		// a match over more letters than a page of the admin API: keys
		// <run>-10, <run>-100 to <run>-109, <run>-1000
		expect(t, c.admin("delete", bulk, "--match-key", fmt.Sprint(run, "-10"), "--match-status", "400",
			"--since", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)), 0,
			fmt.Sprintf("deleted 12 dead letters of %s matching status 400, key containing %q, died since ", bulk, fmt.Sprint(run, "-10")))
		expect(t, c.admin("replay", bulk, "--all"), 0, fmt.Sprintf("replayed %d dead letters of %s", many-12, bulk))
		opsWaitOverview(t, bulk, "the replayed backlog delivered", func(s *opsRelayStatus) bool {
			return intOf(s.DeadLetters) == 0 && intOf(s.Backlog) == 0
		})

		r = c.admin("status")
		row := rowOf(table(t, r.stdout), "RELAY", main)
		if row["DEAD"] != "0" || row["BACKLOG"] != "0" || row["DELIVERED"] != total(base[main].Deliveries, "success", 4) { // with the resend of the events subtest
			t.Errorf("after the replays: %v\n%s", row, r)
		}
		r = c.admin("dead", main)
		expect(t, r, 0)
		if r.stdout != "" || !strings.Contains(r.stderr, "has no dead letters") {
			t.Errorf("dead with none left:\n%s", r)
		}
		if n := len(withBody(app.all(), refusedError)); n != 1 {
			t.Errorf("the deleted dead letter reached the application %d times, want its first attempt only", n)
		}
	})
}
