package command

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/hookrelay/caddy-webhook-relay/ops"
)

// adminClient is how the webhook-relay commands reach a running Caddy's
// admin endpoint: the address `caddy reload` and `caddy stop` would use
// (--address, else the admin address of --config, else Caddy's default,
// which CADDY_ADMIN overrides), over TCP or a unix socket.
type adminClient struct {
	addr   string // as the operator knows it, for messages
	origin string
	http   *http.Client
}

// commandTimeout bounds one request of a command.
const commandTimeout = 30 * time.Second

func newAdminClient(fl caddycmd.Flags) (*adminClient, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, fmt.Errorf("finding Caddy's admin address: %v", err)
	}
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil || na.PortRangeSize() > 1 {
		return nil, fmt.Errorf("admin address %q: want host:port or unix/<path>, as in Caddy's admin option", addr)
	}
	c := &adminClient{addr: addr, origin: "http://" + na.JoinHostPort(0)}
	dial := na.JoinHostPort(0)
	if na.IsUnixNetwork() {
		// a unix socket may carry its permissions: unix//run/caddy.sock|0220
		dial, _, _ = strings.Cut(na.Host, "|")
		c.origin = "http://127.0.0.1" // any host will do over a socket
	}
	c.http = &http.Client{
		Timeout: commandTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, na.Network, dial)
			},
		},
	}
	return c, nil
}

// adminError is an answer of the admin endpoint with an error status.
type adminError struct {
	status int
	msg    string
}

func (e *adminError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.msg) }

// isStatus tells whether err is an answer with that status.
func isStatus(err error, status int) bool {
	var ae *adminError
	return errors.As(err, &ae) && ae.status == status
}

// call makes one request to the admin endpoint, with body as JSON unless
// nil, and decodes a successful JSON answer into out unless nil. An answer
// with an error status is an *adminError; a Caddy that cannot be reached
// is an error that says what to try.
func (c *adminClient) call(method, uri string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.origin+uri, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Origin", c.origin)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach Caddy's admin endpoint at %s (%v): is Caddy running? "+
			"If its admin endpoint listens elsewhere, pass --address <host:port> or --config <its config file>", c.addr, unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorAnswer))
		if err != nil {
			return fmt.Errorf("reading the answer of %s %s: %v", method, uri, err)
		}
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &adminError{status: resp.StatusCode, msg: e.Error}
	}
	if out == nil {
		_, _ = io.CopyN(io.Discard, resp.Body, maxErrorAnswer)
		return nil
	}
	// No cap on a successful answer: a dead letter's body is bounded by
	// the relay's max_body, and as JSON it takes up to 6 times that
	// (\u003c for each "<"), 4/3 in base64; a fixed cap refused the
	// letters that the relay itself had accepted.
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("reading the answer of %s %s: %v", method, uri, err)
		}
		return fmt.Errorf("%s %s: the answer is not the JSON expected (%v); is %s a Caddy with the webhook_relay module?", method, uri, err, c.addr)
	}
	return nil
}

// maxErrorAnswer bounds what is read of an error answer.
const maxErrorAnswer = 1 << 20

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// overview is GET /webhook_relay/: every relay of the running Caddy.
func (c *adminClient) overview() ([]ops.RelayStatus, error) {
	var out []ops.RelayStatus
	err := c.call(http.MethodGet, "/webhook_relay/", nil, &out)
	if isStatus(err, http.StatusNotFound) {
		return nil, fmt.Errorf("the Caddy at %s has no webhook_relay admin API: is it built with this module "+
			"(caddy list-modules | grep webhook_relay)?", c.addr)
	}
	return out, err
}

// relay checks that the running Caddy has a relay called name, and says
// which it has when it does not.
func (c *adminClient) relay(name string) error {
	all, err := c.overview()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(all))
	for _, r := range all {
		if r.Name == name {
			return nil
		}
		names = append(names, r.Name)
	}
	slices.Sort(names)
	running := "none is running"
	if len(names) > 0 {
		running = "running: " + strings.Join(names, ", ")
	}
	return fmt.Errorf("no relay named %q in the Caddy at %s (%s; caddy webhook-relay status lists them)", name, c.addr, running)
}

// relayClient is the client of the Caddy fl names, checked to run the
// relay called name.
func relayClient(fl caddycmd.Flags, name string) (*adminClient, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return nil, err
	}
	return c, c.relay(name)
}

func relayPath(name string, parts ...string) string {
	p := "/webhook_relay/" + url.PathEscape(name)
	for _, part := range parts {
		p += "/" + url.PathEscape(part)
	}
	return p
}
