package command

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/hookrelay/caddy-webhook-relay/ops"
)

// eventsCommand is "caddy webhook-relay events": a relay's history.
func eventsCommand() *cobra.Command {
	c := subcommand("events <relay> [show <id> | resend <id>] [--key <substring>] [--state <state>] [--destination <name>] [--json]",
		"Lists a relay's recent payloads and what became of them, shows one, or resends it", `
Lists the payloads <relay> received within its history (newest first, one
line each): ID, AGE (since it was received), STATE (queued, retrying,
delivered, dead), each destination's state and attempts, the last
attempt's status, and KEY. At most --limit (default 100) lines.

  --key <substring>     its dedupe key contains this (a Runware taskUUID
                        finds every result of that task), in any case
  --state <state>       queued, retrying, delivered or dead
  --destination <name>  one of its destinations
  --since, --until      received within (RFC 3339)

With show <id>, prints that payload: its fields, each destination's state,
every attempt kept (time, destination, status, duration, error), and its
body. With resend <id>, delivers it again to every destination that has it
delivered, with the same Idempotency-Key.

--json prints the admin API's answers instead.
`, cmdEvents)
	c.Flags().String("key", "", "Only payloads whose key contains this")
	c.Flags().String("state", "", "Only payloads in this state: queued, retrying, delivered or dead")
	c.Flags().String("destination", "", "Only payloads for this destination")
	c.Flags().String("since", "", "Only payloads received at or after this time (RFC 3339)")
	c.Flags().String("until", "", "Only payloads received before this time (RFC 3339)")
	c.Flags().Int("limit", ops.DefaultPage, "The most payloads listed")
	c.Flags().Bool("json", false, "Print JSON, as the admin API answers")
	c.Flags().Bool("body", false, "With show <id>: print only the body, exactly as received")
	return c
}

func cmdEvents(fl caddycmd.Flags) (int, error) {
	args := fl.Args()
	switch {
	case len(args) == 0:
		return usage("events", "name the relay: caddy webhook-relay events <relay> [show <id> | resend <id>]")
	case len(args) == 2 && (args[1] == "show" || args[1] == "resend"):
		return usage("events", "name the payload: caddy webhook-relay events %s %s <id>", args[0], args[1])
	case len(args) == 3 && (args[1] == "show" || args[1] == "resend"):
	case len(args) != 1:
		return usage("events", "want caddy webhook-relay events <relay> [show <id> | resend <id>], got %q", args)
	}
	name := args[0]
	c, err := relayClient(fl, name)
	if err != nil {
		return exitError, err
	}
	if len(args) == 3 {
		if args[1] == "resend" {
			return resendEvent(c, name, args[2])
		}
		return showEvent(c, fl, name, args[2])
	}
	q := url.Values{"limit": {strconv.Itoa(fl.Int("limit"))}}
	for _, f := range []string{"key", "state", "destination", "since", "until"} {
		if v := fl.String(f); v != "" {
			q.Set(f, v)
		}
	}
	var page ops.EventPage
	if err := c.call(http.MethodGet, relayPath(name, "events")+"?"+q.Encode(), nil, &page); err != nil {
		return exitError, fmt.Errorf("listing the events of %s: %v", name, err)
	}
	if fl.Bool("json") {
		return exitStatus(printJSON(page))
	}
	if len(page.Entries) == 0 {
		fmt.Fprintf(os.Stderr, "relay %s has no payload in its history that matches\n", name)
		return exitOK, nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tSTATE\tDESTINATIONS\tLAST\tKEY")
	for _, e := range page.Entries {
		last := "-"
		if n := len(e.Attempts); n > 0 {
			last = statusText(e.Attempts[n-1].Status)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", terminalSafe(e.ID, false), ageText(time.Since(e.Received)), e.State,
			destinationsText(e), last, terminalSafe(e.Key, false))
	}
	if err := tw.Flush(); err != nil {
		return exitError, err
	}
	if page.Next != "" {
		fmt.Fprintf(os.Stderr, "(more: --limit %d, or narrow the search)\n", ops.MaxPage)
	}
	return exitOK, nil
}

// destinationsText is each destination's state and attempts, e.g.
// "app:delivered/1 archive:retrying/3".
func destinationsText(e ops.Event) string {
	var parts []string
	for _, d := range e.Destinations {
		parts = append(parts, fmt.Sprintf("%s:%s/%d", d.Destination, d.State, d.Attempts))
	}
	return terminalSafe(strings.Join(parts, " "), false)
}

func showEvent(c *adminClient, fl caddycmd.Flags, name, id string) (int, error) {
	var e ops.Event
	err := c.call(http.MethodGet, relayPath(name, "events", id), nil, &e)
	if isStatus(err, http.StatusNotFound) {
		return exitError, fmt.Errorf("relay %s has no payload %q in its history (caddy webhook-relay events %s lists them)", name, id, name)
	}
	if err != nil {
		return exitError, err
	}
	body := bodyBytes(e.Body, e.BodyBase64)
	if done, code, err := jsonOrBody(fl, e, body); done {
		return code, err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	done := "-"
	if !e.Done.IsZero() {
		done = timeText(e.Done)
	}
	for _, row := range [][2]string{{"id", e.ID}, {"key", e.Key}, {"received", timeText(e.Received)},
		{"state", e.State}, {"done", done}, {"body size", fmt.Sprintf("%d bytes", e.BodySize)}} {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], terminalSafe(row[1], false))
	}
	fmt.Fprintln(tw, "\nDESTINATION\tSTATE\tATTEMPTS\tDONE\tDELIVERY ID")
	for _, d := range e.Destinations {
		done := "-"
		if !d.Done.IsZero() {
			done = timeText(d.Done)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", terminalSafe(d.Destination, false), d.State, d.Attempts, done, terminalSafe(d.ID, false))
	}
	fmt.Fprintln(tw, "\nATTEMPT AT\tDESTINATION\tSTATUS\tTOOK\tERROR")
	for i, a := range e.Attempts {
		if i == 1 && e.AttemptsLeftOut > 0 {
			fmt.Fprintf(tw, "(%d attempts left out)\t\t\t\t\n", e.AttemptsLeftOut)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d ms\t%s\n", timeText(a.At), terminalSafe(a.Destination, false), statusText(a.Status),
			a.DurationMS, terminalSafe(oneLine(a.Error), false))
	}
	if err := tw.Flush(); err != nil {
		return exitError, err
	}
	return printBody(body, e.Body != nil)
}

func resendEvent(c *adminClient, name, id string) (int, error) {
	var out map[string]int
	err := c.call(http.MethodPost, relayPath(name, "events", id, "resend"), nil, &out)
	if isStatus(err, http.StatusNotFound) {
		return exitError, fmt.Errorf("relay %s has no payload %q in its history (caddy webhook-relay events %s lists them)", name, id, name)
	}
	if err != nil {
		return exitError, err
	}
	fmt.Fprintf(stdout, "resent %s to %d destination(s)\n", id, out["resent"])
	return exitOK, nil
}
