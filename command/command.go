// Package command is the caddy webhook-relay subcommands (status, dead,
// replay, delete, pause, resume) and their client of the admin API, whose JSON answers
// they decode into the operations layer's types (package ops).
package command

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/hookrelay/caddy-webhook-relay/ops"
)

// Exit codes of the webhook-relay commands, for scripts.
const (
	exitOK    = 0 // done
	exitError = 1 // Caddy unreachable or answering an error, unknown relay or id, a store unavailable
	exitUsage = 2 // unknown subcommand or flag, wrong arguments
)

const commandExitCodes = `
Exit status:
  0  done
  1  Caddy's admin endpoint could not be reached or answered an error; the
     relay, or a dead letter named, is unknown (the other ids named are
     still handled); for status, a relay's store is unavailable
  2  usage: an unknown subcommand or flag, or wrong arguments
`

const commandAdminText = `
The admin endpoint is found as 'caddy reload' and 'caddy stop' find it:
--address if given, else the admin address in the --config file (with
--adapter), else Caddy's default (localhost:2019, or $CADDY_ADMIN).
`

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "webhook-relay",
		Usage: "(status | events | dead | replay | delete | pause | resume) [<args>] [--address <admin>]",
		Short: "Shows the webhook relays of a running Caddy, manages their dead letters, pauses their deliveries",
		Long: `
Shows the relays (webhook_relay handlers) of a running Caddy, manages
their dead letters and pauses or resumes their destinations, through its
admin API (the routes under /webhook_relay/).

  caddy webhook-relay status [--json]
      every relay: backlog, in flight, dead letters, oldest queued, totals
  caddy webhook-relay events <relay> [--key <substring>] [--state <state>] [--destination <name>] [--json]
      the relay's recent payloads and what became of them, newest first
  caddy webhook-relay events <relay> (show | resend) <id>
      one payload with its attempts and body, or delivered again
  caddy webhook-relay dead <relay> [--json]
      the relay's dead letters: id, age, attempts, last status, last error, key
  caddy webhook-relay dead <relay> show <id> [--json | --body]
      one dead letter, with its body
  caddy webhook-relay replay <relay> (--all | <id>... | --match-... )
      puts dead letters back in the queue, to be delivered again
  caddy webhook-relay delete <relay> (--all | <id>... | --match-... )
      deletes dead letters for good
  caddy webhook-relay pause <relay> [<destination>]
      stops delivering to the destination (all of the relay's without one);
      payloads are still accepted and wait in the store
  caddy webhook-relay resume <relay> [<destination>]
      delivers again what waits, and what comes

The --match flags (--match-destination, --match-status, --match-key,
--since, --until) pick every dead letter that matches them all, however
many there are.
` + commandAdminText + commandExitCodes,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.PersistentFlags().String("address", "", "Address of Caddy's admin endpoint (default: from --config, else Caddy's default)")
			cmd.PersistentFlags().StringP("config", "c", "", "Caddy's config file, to read the admin address from")
			cmd.PersistentFlags().StringP("adapter", "a", "", "Name of the config adapter of --config")
			cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
				return caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) {
					return exitUsage, fmt.Errorf("%v (see %s --help)", err, c.CommandPath())
				})(c, nil)
			})
			cmd.Args = cobra.ArbitraryArgs
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
				if len(fl.Args()) == 0 {
					return usage("", "name a subcommand: status, events, dead, replay, delete, pause or resume")
				}
				return usage("", "unknown subcommand %q: want status, events, dead, replay, delete, pause or resume", fl.Args()[0])
			})

			status := subcommand("status [--json] [--address <admin>]",
				"Shows every relay: backlog, in flight, dead letters, oldest queued, totals", `
Shows every relay of the running Caddy, one line each:

  RELAY      its name
  BACKLOG    payloads acknowledged and not yet delivered
  IN-FLIGHT  delivery attempts running now
  DEAD       dead letters, waiting to be replayed or deleted
  STORED     bytes the store keeps of queued payloads and dead letters
             (bodies and kept headers), bounded by max_stored
  OLDEST     how long the oldest queued payload has waited
  ACCEPTED, DUPLICATE, REFUSED
             requests since Caddy started: stored, answered as duplicates,
             refused (unauthorized, too large, bad, timed out, unavailable)
  DELIVERED, RETRIES, DIED
             delivery attempts since Caddy started: delivered, to be
             retried, moved to the dead letters
  UPSTREAM   the host deliveries go to
  PAUSED     the paused destinations ("-" for none): nothing is delivered
             to them until they are resumed

--json prints the admin API's answer instead, for machines.
`,
				cmdRelayStatus)
			status.Flags().Bool("json", false, "Print JSON, as the admin API answers")

			dead := subcommand("dead <relay> [show <id>] [--json] [--body]",
				"Lists a relay's dead letters, or shows one with its body", `
Lists the dead letters of <relay>, oldest first, one line each: ID, AGE
(since it was received), ATTEMPTS, STATUS (the upstream's last answer, "-"
for none), ERROR (the last one, cut at 60 characters) and KEY. All of them
are listed, page after page of the admin API.

With show <id>, prints that dead letter: its fields, the request headers
kept for its delivery, and its body (JSON indented; a body that is not
UTF-8 in base64). Control characters that came from the sender are shown
escaped (\x1b), so no escape sequence reaches the terminal.

--json prints the admin API's answers instead (for a list, every entry in
one array); --body prints only the body of show <id>, byte for byte, e.g.
to save it: caddy webhook-relay dead default show <id> --body > payload.json
`,
				cmdDead)
			dead.Flags().Bool("json", false, "Print JSON, as the admin API answers")
			dead.Flags().Bool("body", false, "With show <id>: print only the body, exactly as received")

			replay := subcommand("replay <relay> (--all | <id>... | --match-status <code> --match-key <substring> ...)",
				"Puts dead letters back in the queue, to be delivered again", `
Puts the dead letters named (with --all, every dead letter of <relay>; with
the match flags, every one that matches) back in the relay's queue, with
their attempts reset: they are delivered like new payloads. Fix whatever
made the upstream refuse them first (see their last status and error with
'caddy webhook-relay dead <relay>').
`+commandMatchText+`
Prints one line per dead letter replayed (with --all or a match, how many).
An id that is not a dead letter of <relay> (unknown, or replayed or deleted
already) is reported and makes the exit status 1; the other ids are still
replayed.
`,
				cmdReplay)
			selectionFlags(replay, "Replay")

			del := subcommand("delete <relay> (--all | <id>... | --match-status <code> --match-key <substring> ...)",
				"Deletes dead letters for good", `
Deletes the dead letters named (with --all, every dead letter of <relay>;
with the match flags, every one that matches) from <relay>; they cannot be
brought back.
`+commandMatchText+`
Prints one line per dead letter deleted (with --all or a match, how many).
An id that is not a dead letter of <relay> is reported and makes the exit
status 1; the other ids are still deleted.
`,
				cmdDelete)
			selectionFlags(del, "Delete")
			pause := subcommand("pause <relay> [<destination>]",
				"Pauses a relay's deliveries to a destination, or to all of them", `
Pauses the destination named of <relay> or, without one, every destination
of <relay>: its payloads are still accepted (within max_backlog and
max_stored) and wait in the store; nothing is attempted until it is
resumed. Attempts running when the pause comes finish. The pause is kept
in the relay's store: it survives a restart of Caddy, and every Caddy
sharing a Redis store honours it within about a second.

Prints each destination of the relay and whether it is paused. A
destination the relay does not have is an error naming the ones it has.
`,
				func(fl caddycmd.Flags) (int, error) { return cmdPause(fl, "pause") })
			resume := subcommand("resume <relay> [<destination>]",
				"Resumes a relay's deliveries to a destination, or to all of them", `
Resumes the destination named of <relay> or, without one, every destination
of <relay>: what waits in the store is delivered at once, oldest first, and
what comes after it.

Prints each destination of the relay and whether it is paused. A
destination the relay does not have is an error naming the ones it has.
`,
				func(fl caddycmd.Flags) (int, error) { return cmdPause(fl, "resume") })
			cmd.AddCommand(status, eventsCommand(), dead, replay, del, pause, resume)
		},
	})
}

const commandMatchText = `
The match flags pick every dead letter of <relay> that matches all of the
flags given, however many there are (the relay goes through them a page at
a time):

  --match-destination <name>  the destination it was for
  --match-status <code>       the upstream's last status (0: no answer)
  --match-key <substring>     its dedupe key contains this
  --since <time>              died at or after (RFC 3339, 2026-12-06T20:00:00Z)
  --until <time>              died before (RFC 3339)

e.g. every letter a 500 killed in the last outage:
  --match-status 500 --since 2026-12-06T20:00:00Z --until 2026-12-06T21:00:00Z
`

// selectionFlags are the flags of replay and delete that pick letters
// other than by id.
func selectionFlags(c *cobra.Command, verb string) {
	c.Flags().Bool("all", false, verb+" every dead letter of the relay")
	c.Flags().String("match-destination", "", verb+" the dead letters for this destination")
	c.Flags().String("match-status", "", verb+" the dead letters with this last status (0: no answer)")
	c.Flags().String("match-key", "", verb+" the dead letters whose key contains this")
	c.Flags().String("since", "", verb+" the dead letters that died at or after this time (RFC 3339)")
	c.Flags().String("until", "", verb+" the dead letters that died before this time (RFC 3339)")
}

// selection reads what replay or delete (sub) acts on: --all, the ids
// after the relay, or the match flags, exactly one of them.
func selection(fl caddycmd.Flags, sub string) (ops.Selection, int, error) {
	args := fl.Args()
	syntax := "caddy webhook-relay " + sub + " <relay> (--all | <id>... | --match-status <code> --match-key <substring> ...)"
	if len(args) == 0 {
		code, err := usage(sub, "name the relay: %s", syntax)
		return ops.Selection{}, code, err
	}
	m := ops.Match{
		Destination: fl.String("match-destination"),
		Key:         fl.String("match-key"),
		Since:       fl.String("since"),
		Until:       fl.String("until"),
	}
	if v := fl.String("match-status"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 999 {
			code, err := usage(sub, "--match-status %q: want a status code such as 500, or 0 for no answer", v)
			return ops.Selection{}, code, err
		}
		m.Status = &n
	}
	for flag, v := range map[string]string{"--since": m.Since, "--until": m.Until} {
		if _, err := time.Parse(time.RFC3339Nano, v); v != "" && err != nil {
			code, err := usage(sub, "%s %q: want an RFC 3339 time such as 2026-12-06T20:00:00Z", flag, v)
			return ops.Selection{}, code, err
		}
	}
	var sel ops.Selection
	kinds := 0
	if fl.Bool("all") {
		sel.All = true
		kinds++
	}
	if len(args) > 1 {
		sel.IDs = args[1:]
		kinds++
	}
	if m != (ops.Match{}) {
		sel.Match = &m
		kinds++
	}
	switch kinds {
	case 0:
		code, err := usage(sub, "name the dead letters to %s, --all, or match them: %s", sub, syntax)
		return sel, code, err
	case 1:
		return sel, exitOK, nil
	}
	code, err := usage(sub, "%s either --all, the ids named, or the letters matching the match flags, one of them", sub)
	return sel, code, err
}

// subcommand is one of webhook-relay's subcommands; its help ends as
// every one's does.
func subcommand(use, short, long string, run caddycmd.CommandFunc) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long + commandAdminText + commandExitCodes,
		Args:  cobra.ArbitraryArgs,
		RunE:  caddycmd.WrapCommandFuncForCobra(run),
	}
}

// usage is a usage error of the subcommand sub (empty: of webhook-relay
// itself): exit status 2.
func usage(sub, format string, args ...any) (int, error) {
	help := "caddy webhook-relay --help"
	if sub != "" {
		help = "caddy webhook-relay " + sub + " --help"
	}
	return exitUsage, fmt.Errorf(format+" (see "+help+")", args...)
}

func cmdRelayStatus(fl caddycmd.Flags) (int, error) {
	if len(fl.Args()) > 0 {
		return usage("status", "status takes no arguments, got %q", fl.Args())
	}
	c, err := newAdminClient(fl)
	if err != nil {
		return exitError, err
	}
	relays, err := c.overview()
	if err != nil {
		return exitError, err
	}
	if fl.Bool("json") {
		if err := printJSON(relays); err != nil {
			return exitError, err
		}
	} else if len(relays) == 0 {
		fmt.Fprintf(os.Stderr, "no webhook_relay is running in the Caddy at %s\n", c.addr)
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RELAY\tBACKLOG\tIN-FLIGHT\tDEAD\tSTORED\tOLDEST\tACCEPTED\tDUPLICATE\tREFUSED\tDELIVERED\tRETRIES\tDIED\tUPSTREAM\tPAUSED")
		for _, r := range relays {
			backlog, dead, stored, oldest := strconv.Itoa(r.Backlog), strconv.Itoa(r.DeadLetters), sizeText(r.StoredBytes), "-"
			if r.Error != "" {
				backlog, dead, stored = "?", "?", "?"
			}
			if r.OldestQueued != nil {
				oldest = ageText(time.Since(*r.OldestQueued))
			}
			var refused int64
			for outcome, n := range r.Requests {
				if !answeredOK[outcome] {
					refused += n
				}
			}
			var paused []string
			for _, d := range r.Destinations {
				if d.Paused {
					paused = append(paused, d.Name)
				}
			}
			pausedText := "-"
			if len(paused) > 0 {
				pausedText = strings.Join(paused, ",")
			}
			upstream := r.UpstreamHost
			if len(r.Destinations) > 1 { // each by name, with what waits for it
				var each []string
				for _, d := range r.Destinations {
					each = append(each, fmt.Sprintf("%s=%s(%d)", d.Name, d.UpstreamHost, d.Backlog))
				}
				upstream = strings.Join(each, ",")
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", r.Name, backlog, r.InFlight, dead, stored, oldest,
				r.Requests["accepted"], r.Requests["duplicate"], refused,
				r.Deliveries["success"], r.Deliveries["retry"], r.Deliveries["dead"], upstream, pausedText)
		}
		if err := tw.Flush(); err != nil {
			return exitError, err
		}
	}
	var broken []string
	for _, r := range relays {
		if r.Error != "" {
			broken = append(broken, r.Name+": "+r.Error)
		}
	}
	if len(broken) > 0 {
		return exitError, fmt.Errorf("%s", strings.Join(broken, "; "))
	}
	return exitOK, nil
}

func cmdDead(fl caddycmd.Flags) (int, error) {
	args := fl.Args()
	switch {
	case len(args) == 0:
		return usage("dead", "name the relay: caddy webhook-relay dead <relay> [show <id>]")
	case len(args) == 2 && args[1] == "show":
		return usage("dead", "name the dead letter to show: caddy webhook-relay dead %s show <id>", args[0])
	case len(args) == 3 && args[1] == "show":
	case len(args) != 1:
		return usage("dead", "want caddy webhook-relay dead <relay> [show <id>], got %q", args)
	}
	show := len(args) == 3
	if fl.Bool("body") && (!show || fl.Bool("json")) {
		return usage("dead", "--body goes with show <id>, without --json")
	}
	name := args[0]
	c, err := relayClient(fl, name)
	if err != nil {
		return exitError, err
	}
	if show {
		return showDead(c, fl, name, args[2])
	}

	var all []ops.DeadLetter
	for after := ""; ; {
		q := url.Values{"limit": {strconv.Itoa(ops.MaxPage)}}
		if after != "" {
			q.Set("after", after)
		}
		var page ops.DeadPage
		if err := c.call(http.MethodGet, relayPath(name, "dead")+"?"+q.Encode(), nil, &page); err != nil {
			return exitError, fmt.Errorf("listing the dead letters of %s: %v", name, err)
		}
		all = append(all, page.Entries...)
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	if fl.Bool("json") {
		if all == nil {
			all = []ops.DeadLetter{}
		}
		return exitStatus(printJSON(all))
	}
	if len(all) == 0 {
		fmt.Fprintf(os.Stderr, "relay %s has no dead letters\n", name)
		return exitOK, nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tATTEMPTS\tSTATUS\tERROR\tKEY")
	for _, d := range all {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", terminalSafe(d.ID, false), ageText(time.Since(d.Received)), d.Attempts,
			statusText(d.LastStatus), terminalSafe(cut(oneLine(d.LastError), 60), false), terminalSafe(d.Key, false))
	}
	return exitStatus(tw.Flush())
}

func showDead(c *adminClient, fl caddycmd.Flags, name, id string) (int, error) {
	var d ops.DeadLetter
	err := c.call(http.MethodGet, relayPath(name, "dead", id), nil, &d)
	if isStatus(err, http.StatusNotFound) {
		return exitError, fmt.Errorf("relay %s has no dead letter %q (caddy webhook-relay dead %s lists them)", name, id, name)
	}
	if err != nil {
		return exitError, err
	}
	body := bodyBytes(d.Body, d.BodyBase64)
	if done, code, err := jsonOrBody(fl, d, body); done {
		return code, err
	}
	// Everything below comes from the sender (the body, the key, the
	// request's fields) or from its answers: control characters are
	// shown escaped, so that no escape sequence reaches the terminal
	// (colours, cursor moves, OSC 52 writing the clipboard).
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	died := "-"
	if !d.Died.IsZero() {
		died = timeText(d.Died)
	}
	rows := [][2]string{
		{"id", d.ID}, {"key", d.Key}, {"received", timeText(d.Received)}, {"died", died},
		{"attempts", strconv.Itoa(d.Attempts)}, {"last status", statusText(d.LastStatus)},
		{"last error", oneLine(d.LastError)}, {"body size", fmt.Sprintf("%d bytes", d.BodySize)},
	}
	if r := d.Request; r != nil {
		rows = append(rows, [2]string{"content type", r.ContentType}, [2]string{"user agent", r.UserAgent},
			[2]string{"forwarded for", r.ForwardedFor}, [2]string{"query", r.Query})
	}
	for _, row := range rows {
		if row[1] == "" {
			row[1] = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\n", row[0], terminalSafe(row[1], false))
	}
	if err := tw.Flush(); err != nil {
		return exitError, err
	}
	return printBody(body, d.Body != nil)
}

// bodyBytes is a kept body as the admin API gave it: as text, or in base64
// when it is not UTF-8.
func bodyBytes(text *string, b64 []byte) []byte {
	if text != nil {
		return []byte(*text)
	}
	return b64
}

// jsonOrBody prints v as the admin API's JSON with --json, or body as it
// is with --body; done tells whether it printed.
func jsonOrBody(fl caddycmd.Flags, v any, body []byte) (done bool, code int, err error) {
	switch {
	case fl.Bool("json"):
		code, err = exitStatus(printJSON(v))
		return true, code, err
	case fl.Bool("body"):
		_, err = stdout.Write(body)
		code, err = exitStatus(err)
		return true, code, err
	}
	return false, 0, nil
}

// printBody prints a kept body, after its fields: JSON indented, other
// text as it is, anything else (not UTF-8: text false) in base64; control
// characters that came from the sender escaped.
func printBody(body []byte, text bool) (int, error) {
	w := bufio.NewWriter(stdout)
	fmt.Fprintln(w)
	switch {
	case !text && len(body) > 0:
		fmt.Fprintf(w, "(the body is not UTF-8: %d bytes in base64; --body prints them as they are)\n", len(body))
		enc := base64.StdEncoding.EncodeToString(body)
		for len(enc) > 76 {
			fmt.Fprintln(w, enc[:76])
			enc = enc[76:]
		}
		fmt.Fprintln(w, enc)
	case json.Valid(body):
		var out bytes.Buffer
		_ = json.Indent(&out, body, "", "  ")
		fmt.Fprintln(w, terminalSafe(out.String(), true))
	default:
		fmt.Fprintln(w, terminalSafe(string(body), true))
	}
	if controlChars(body) {
		fmt.Fprintln(w, "(control characters are shown escaped, e.g. \\x1b; --body prints the body as it is)")
	}
	return exitStatus(w.Flush())
}

// terminalSafe shows s with its control characters escaped: C0 (but, with
// lines set, tab and newline), DEL, C1 (U+0080-U+009F, which some
// terminals obey as ESC sequences), Unicode's bidirectional controls (text
// shown in an order other than its own), and invalid UTF-8. A backslash
// stays as it is.
func terminalSafe(s string, lines bool) string {
	i := strings.IndexFunc(s, func(r rune) bool { return unsafeRune(r, lines) })
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for _, r := range s[i:] {
		switch {
		case !unsafeRune(r, lines):
			b.WriteRune(r)
		case r == utf8.RuneError:
			b.WriteString(`\ufffd`)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	return b.String()
}

func unsafeRune(r rune, lines bool) bool {
	switch {
	case lines && (r == '\t' || r == '\n'):
		return false
	case r < 0x20, r >= 0x7f && r <= 0x9f, r == utf8.RuneError:
		return true
	}
	return unicode.Is(unicode.Bidi_Control, r)
}

// controlChars reports whether body holds anything terminalSafe escapes.
func controlChars(body []byte) bool {
	return bytes.IndexFunc(body, func(r rune) bool { return unsafeRune(r, true) }) >= 0
}

func cmdReplay(fl caddycmd.Flags) (int, error) {
	sel, code, err := selection(fl, "replay")
	if err != nil {
		return code, err
	}
	name := fl.Args()[0]
	c, err := relayClient(fl, name)
	if err != nil {
		return exitError, err
	}
	var out struct {
		Replayed int `json:"replayed"`
	}
	if sel.IDs == nil {
		if err := c.call(http.MethodPost, relayPath(name, "dead", "replay"), sel, &out); err != nil {
			return exitError, fmt.Errorf("replaying the dead letters of %s: %v", name, err)
		}
		fmt.Printf("replayed %d dead letters of %s%s\n", out.Replayed, name, matching(sel))
		return exitOK, nil
	}
	// one id at a time, so that each is known to have gone back or not
	var missing []string
	for _, id := range sel.IDs {
		out.Replayed = 0
		if err := c.call(http.MethodPost, relayPath(name, "dead", "replay"), ops.Selection{IDs: []string{id}}, &out); err != nil {
			return exitError, fmt.Errorf("replaying %s of %s: %v", id, name, err)
		}
		if out.Replayed == 0 {
			missing = append(missing, id)
			continue
		}
		fmt.Printf("replayed %s\n", id)
	}
	return missingIDs(name, missing)
}

func cmdDelete(fl caddycmd.Flags) (int, error) {
	sel, code, err := selection(fl, "delete")
	if err != nil {
		return code, err
	}
	name := fl.Args()[0]
	c, err := relayClient(fl, name)
	if err != nil {
		return exitError, err
	}
	if sel.IDs == nil {
		var out struct {
			Deleted int `json:"deleted"`
		}
		if err := c.call(http.MethodPost, relayPath(name, "dead", "delete"), sel, &out); err != nil {
			return exitError, fmt.Errorf("deleting the dead letters of %s: %v", name, err)
		}
		fmt.Printf("deleted %d dead letters of %s%s\n", out.Deleted, name, matching(sel))
		return exitOK, nil
	}
	var missing []string
	for _, id := range sel.IDs {
		err := c.call(http.MethodDelete, relayPath(name, "dead", id), nil, nil)
		switch {
		case isStatus(err, http.StatusNotFound):
			missing = append(missing, id)
		case err != nil:
			return exitError, fmt.Errorf("deleting %s of %s: %v", id, name, err)
		default:
			fmt.Printf("deleted %s\n", id)
		}
	}
	return missingIDs(name, missing)
}

// cmdPause pauses (verb "pause") or resumes a relay's destination, or all
// of its destinations.
func cmdPause(fl caddycmd.Flags, verb string) (int, error) {
	args := fl.Args()
	if len(args) < 1 || len(args) > 2 {
		return usage(verb, "want caddy webhook-relay %s <relay> [<destination>], got %q", verb, args)
	}
	name := args[0]
	c, err := relayClient(fl, name)
	if err != nil {
		return exitError, err
	}
	path := relayPath(name, verb)
	if len(args) == 2 {
		path = relayPath(name, "destinations", args[1], verb)
	}
	var res ops.PauseResult
	err = c.call(http.MethodPost, path, nil, &res)
	var ae *adminError
	if errors.As(err, &ae) && ae.status == http.StatusNotFound {
		return exitError, errors.New(ae.msg) // the relay has no such destination: the message names those it has
	}
	if err != nil {
		return exitError, fmt.Errorf("%s %s: %v", verb, name, err)
	}
	for _, d := range res.Destinations {
		state := "delivering"
		if d.Paused {
			state = "paused"
		}
		fmt.Fprintf(stdout, "%s %s: %s\n", name, d.Name, state)
	}
	return exitOK, nil
}

// answeredOK are the outcomes answered 2xx, which REFUSED does not count:
// the payloads taken, and the requests answered without storing anything
// (a handshake, a payload no destination's filter takes).
var answeredOK = map[string]bool{"accepted": true, "duplicate": true, "ignored": true, "challenge": true}

// matching describes a selection's match for the commands' summary line.
func matching(sel ops.Selection) string {
	if sel.Match == nil {
		return ""
	}
	return " matching " + sel.Match.String()
}

// missingIDs is the outcome of handling ids one by one: an error naming
// those that were not dead letters of the relay.
func missingIDs(name string, missing []string) (int, error) {
	if len(missing) == 0 {
		return exitOK, nil
	}
	quoted := make([]string, len(missing))
	for i, id := range missing {
		quoted[i] = strconv.Quote(id)
	}
	return exitError, fmt.Errorf("relay %s has no dead letter %s (replayed or deleted already? caddy webhook-relay dead %s lists them)",
		name, strings.Join(quoted, ", "), name)
}

func exitStatus(err error) (int, error) {
	if err != nil {
		return exitError, err
	}
	return exitOK, nil
}

// stdout is where the commands print; a test's buffer in tests.
var stdout io.Writer = os.Stdout

// printJSON prints v as indented JSON. encoding/json leaves DEL, the C1
// controls and the bidirectional ones as they are in strings; they are
// escaped too (\u009b), which is the same JSON, so that printing a dead
// letter sends no escape sequence to the terminal.
func printJSON(v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	b := buf.Bytes()
	if i := bytes.IndexFunc(b, func(r rune) bool { return unsafeRune(r, true) }); i >= 0 {
		var out bytes.Buffer
		out.Write(b[:i])
		for _, r := range string(b[i:]) {
			if unsafeRune(r, true) {
				fmt.Fprintf(&out, `\u%04x`, r) // only inside strings: JSON's own characters are ASCII
			} else {
				out.WriteRune(r)
			}
		}
		b = out.Bytes()
	}
	_, err := stdout.Write(b)
	return err
}

// ageText is a duration as the commands print ages: 42s, 3m12s, 5h3m, 2d4h.
func ageText(d time.Duration) string {
	s := int64(max(d, 0) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}

// sizeText is a byte count as a Caddyfile writes sizes: 0B, 900B, 1.5KiB,
// 12MiB, 2GiB (no space, so that a table's columns stay one word each).
func sizeText(n int64) string {
	s := strings.ReplaceAll(humanize.IBytes(uint64(max(n, 0))), " ", "")
	return strings.Replace(s, ".0", "", 1) // humanize writes 2.0GiB
}

func timeText(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05 UTC") + " (" + ageText(time.Since(t)) + " ago)"
}

func statusText(status int) string {
	if status == 0 {
		return "-"
	}
	return strconv.Itoa(status)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// cut shortens s to n characters, marking the cut.
func cut(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
