// Package console is the webhook_relay_console handler: an operator's web
// page of the relays running in this Caddy, with its assets embedded. Its
// JSON endpoints are thin over the operations layer (package ops), as the
// admin API's routes are.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/ops"
)

func init() {
	caddy.RegisterModule(Console{})
}

// Console serves the operator's page of the relays running in this Caddy:
// every relay's backlog, in flight, dead letters and request rates, each
// relay's dead letters, one dead letter with its body, and replaying or
// deleting them. It works on the relays of this process, as the admin API
// does, and serves the page, its script and style, and the JSON the page
// reads, at any path: mount it in a site behind basic_auth (a request that
// no authentication handler has authenticated gets 403, unless
// AllowAnonymous is set), e.g.
//
//	ops.example.com {
//		basic_auth {
//			ops <hash>
//		}
//		webhook_relay_console
//	}
//
// Under a path, mount it with handle_path or handle (the page finds its
// JSON relative to its own address):
//
//	handle /relay-console/* {
//		webhook_relay_console
//	}
//
// A request whose path ends in "/" gets the page; ".../console.js" and
// ".../console.css" its assets; ".../api/<endpoint>" the JSON:
//
//	GET  api/relays                          {"now": ..., "relays": [...]} as the admin API's overview
//	GET  api/dead?relay=<name>[&after=<id>][&limit=<n>]   dead letters, paged
//	GET  api/letter?relay=<name>&id=<id>     one dead letter with its body
//	POST api/replay  {"relay": <name>, "ids": [...]}, {"relay": <name>, "all": true} or {"relay": <name>, "match": {...}}
//	POST api/delete  the same
//	POST api/pause   {"relay": <name>, "destination": <name>}, or without destination all of them
//	POST api/resume  the same
//	GET  api/events?relay=<name>[&key=][&state=][&destination=][&after=][&limit=]   the relay's history, newest first
//	GET  api/event?relay=<name>&id=<id>      one event with its attempts and body
//	POST api/resend  {"relay": <name>, "id": <id>}
//
// A match is the admin API's (ops.Match): every dead letter matching it.
//
// POSTs must carry Content-Type application/json and come from the page's
// own origin (Sec-Fetch-Site and Origin are checked), so another site
// cannot make a logged-in browser replay, delete, pause or resume. No secret of a relay
// is shown: its auth parameters never reach the store, and the console
// shows the upstream's host only.
type Console struct {
	// AllowAnonymous serves requests that no authentication handler
	// (basic_auth, or another provider of Caddy's authentication handler)
	// has authenticated, i.e. whose {http.auth.user.id} is empty.
	// Without it such a request gets 403 and a page saying how to put
	// basic_auth in front: the console shows payloads and can delete them.
	// Set it when access is restricted otherwise (a private network, a
	// forward_auth that sets no user).
	AllowAnonymous bool `json:"allow_anonymous,omitempty"`

	logger *zap.Logger
	origin *http.CrossOriginProtection
}

// CaddyModule returns the Caddy module information.
func (Console) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.webhook_relay_console",
		New: func() caddy.Module { return new(Console) },
	}
}

// Provision sets up the console.
func (c *Console) Provision(ctx caddy.Context) error {
	c.logger = ctx.Logger()
	c.origin = http.NewCrossOriginProtection()
	return nil
}

//go:embed index.html console.js console.css
var consoleFiles embed.FS

// consoleAsset is one embedded file, with its type and a validator.
type consoleAsset struct {
	body        []byte
	contentType string
	etag        string
}

// consoleAssets are the page's files by the last element of their path.
var consoleAssets = func() map[string]consoleAsset {
	out := make(map[string]consoleAsset)
	err := fs.WalkDir(consoleFiles, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := consoleFiles.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[path.Base(p)] = consoleAsset{
			body:        b,
			contentType: mime.TypeByExtension(path.Ext(p)),
			etag:        `"` + hex.EncodeToString(sum[:8]) + `"`,
		}
		return nil
	})
	if err != nil {
		panic("webhook_relay_console: reading the embedded page: " + err.Error())
	}
	return out
}()

// consoleCSP allows the page its own script, style and JSON, and images
// from data: URIs (the thumbnails), nothing else: no other origin, no
// inline script, no framing.
const consoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// ServeHTTP serves the page, its assets and its JSON. It never calls next.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	h := w.Header()
	h.Set("Content-Security-Policy", consoleCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")

	p := r.URL.Path
	dir, last := path.Split(p)
	isAPI := path.Base(dir) == "api" && last != ""
	if !c.AllowAnonymous && userOf(r) == "" {
		return c.refuseAnonymous(w, r, isAPI)
	}
	if isAPI {
		return c.serveAPI(w, r, last)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("the console page is read with GET, not %s", r.Method))
	}
	switch {
	case last == "console.js" || last == "console.css":
		return serveAsset(w, r, consoleAssets[last])
	case strings.Contains(last, "."):
		return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("the console has no %s", last))
	}
	// The page's address is a directory, as the browser sees it (before a
	// handle_path stripped it): the page's links are relative to it.
	seen := p
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		seen = orig.URL.Path
	}
	if last == "" && strings.HasSuffix(seen, "/") {
		return serveAsset(w, r, consoleAssets["index.html"])
	}
	// The target is a path of this site only: a path that starts with
	// "//" (or "/\", which browsers read the same) would be another
	// host's address (GET //evil.example -> Location: //evil.example/).
	target := "/" + strings.TrimLeft(seen, "/\\") + "/"
	if r.URL.RawQuery != "" {
		target += "?" + r.URL.RawQuery
	}
	h.Set("Location", target)
	w.WriteHeader(http.StatusMovedPermanently)
	return nil
}

// anonymousPage is the answer to a request no authentication handler has
// authenticated.
const anonymousPage = `<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>Webhook relay console: sign-in required</title>
<h1>This console needs authentication in front of it</h1>
<p>The webhook relay console shows the payloads of your relays and can
replay and delete them, so it refuses requests that no authentication
handler has authenticated. Put <code>basic_auth</code> in front of it in
your Caddyfile (hash a password with <code>caddy hash-password</code>):</p>
<pre>
ops.example.com {
	basic_auth {
		ops &lt;the hash&gt;
	}
	webhook_relay_console
}
</pre>
<p>If access is already restricted otherwise (a private network, or a
<code>forward_auth</code> that sets no user), allow anonymous requests on
purpose:</p>
<pre>
webhook_relay_console {
	allow_anonymous
}
</pre>
</html>
`

// refuseAnonymous answers 403: with the page above, or for the page's JSON
// a JSON error saying the same.
func (c *Console) refuseAnonymous(w http.ResponseWriter, r *http.Request, isAPI bool) error {
	c.logger.Debug("console: anonymous request refused", zap.String("remote_ip", remoteIP(r)), zap.String("path", r.URL.Path))
	if isAPI {
		w.Header().Set("Cache-Control", "no-store")
		return ops.WriteJSON(w, http.StatusForbidden, map[string]string{"error": "the console needs authentication in front of it: " +
			"put basic_auth before webhook_relay_console, or set allow_anonymous"})
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusForbidden)
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, anonymousPage)
	}
	return nil
}

func serveAsset(w http.ResponseWriter, r *http.Request, a consoleAsset) error {
	w.Header().Set("Content-Type", a.contentType)
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
	return nil
}

// consoleAction is the body of a replay or delete: the relay and an
// ops.Selection.
type consoleAction struct {
	Relay string     `json:"relay"`
	IDs   []string   `json:"ids"`
	All   bool       `json:"all"`
	Match *ops.Match `json:"match"`
}

func (c *Console) serveAPI(w http.ResponseWriter, r *http.Request, endpoint string) error {
	w.Header().Set("Cache-Control", "no-store")
	err := c.api(w, r, endpoint)
	if err == nil {
		return nil
	}
	ae := ops.HTTPError(err)
	return ops.WriteJSON(w, ae.HTTPStatus, map[string]string{"error": ae.Err.Error()})
}

// api answers the page's JSON: each endpoint is one call of the
// operations, as the admin API's routes are.
func (c *Console) api(w http.ResponseWriter, r *http.Request, endpoint string) error {
	var want string
	switch endpoint {
	case "relays", "dead", "letter", "events", "event":
		want = http.MethodGet
	case "replay", "delete", "pause", "resume", "resend":
		want = http.MethodPost
	default:
		return apiError(http.StatusNotFound, fmt.Sprintf("the console has no api/%s", endpoint))
	}
	if r.Method != want {
		w.Header().Set("Allow", want)
		return apiError(http.StatusMethodNotAllowed, fmt.Sprintf("api/%s takes %s, not %s", endpoint, want, r.Method))
	}

	q := r.URL.Query()
	switch endpoint {
	case "relays":
		return ops.WriteJSON(w, http.StatusOK, map[string]any{"now": time.Now(), "relays": ops.List(r.Context())})
	case "events":
		if _, err := ops.Find(q.Get("relay")); err != nil {
			return err
		}
		s, err := ops.ParseEventSearch(q)
		if err != nil {
			return err
		}
		page, err := ops.ListEvents(r.Context(), q.Get("relay"), s)
		if err != nil {
			return err
		}
		return ops.WriteJSON(w, http.StatusOK, page)
	case "event":
		e, err := ops.ShowEvent(r.Context(), q.Get("relay"), q.Get("id"))
		if err != nil {
			return err
		}
		return ops.WriteJSON(w, http.StatusOK, e)
	case "letter":
		d, err := ops.ShowDead(r.Context(), q.Get("relay"), q.Get("id"))
		if err != nil {
			return err
		}
		return ops.WriteJSON(w, http.StatusOK, d)
	case "dead":
		if _, err := ops.Find(q.Get("relay")); err != nil {
			return err // an unknown relay before a bad limit, as the admin API
		}
		limit, err := ops.ParseLimit(q.Get("limit"))
		if err != nil {
			return err
		}
		page, err := ops.ListDead(r.Context(), q.Get("relay"), q.Get("after"), limit)
		if err != nil {
			return err
		}
		return ops.WriteJSON(w, http.StatusOK, page)
	}

	if err := c.origin.Check(r); err != nil {
		return apiError(http.StatusForbidden, "refused: the console replays and deletes only for its own page ("+err.Error()+")")
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return apiError(http.StatusUnsupportedMediaType, "send the request as application/json")
	}
	if endpoint == "pause" || endpoint == "resume" {
		return c.pause(w, r, endpoint)
	}
	if endpoint == "resend" {
		return c.resend(w, r)
	}
	var act consoleAction
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&act); err != nil {
		return apiError(http.StatusBadRequest, `want {"relay": "<name>", "ids": ["<id>", ...]}, {"relay": "<name>", "all": true} `+
			`or {"relay": "<name>", "match": {...}}`)
	}
	kinds := 0
	for _, given := range []bool{act.IDs != nil, act.All, act.Match != nil} {
		if given {
			kinds++
		}
	}
	if kinds != 1 {
		return apiError(http.StatusBadRequest, `name the dead letters with "ids", set "all": true, or give a "match": one of them, not both`)
	}
	if _, err := ops.Find(act.Relay); err != nil {
		return err
	}
	sel := ops.Selection{IDs: act.IDs, All: act.All, Match: act.Match}
	logger := c.logger.With(zap.String("relay", act.Relay), zap.Bool("all", act.All), zap.Int("ids", len(act.IDs)),
		zap.String("user", userOf(r)), zap.String("remote_ip", remoteIP(r)))
	if m := act.Match; m != nil {
		// the key substring is a part of keys: logged at debug only, as keys are
		logger = logger.With(zap.String("match_destination", m.Destination), zap.Intp("match_status", m.Status),
			zap.Bool("match_key", m.Key != ""), zap.String("match_since", m.Since), zap.String("match_until", m.Until))
		logger.Debug("console: match", zap.String("match_key", m.Key))
	}

	if endpoint == "replay" {
		n, err := ops.ReplaySelected(r.Context(), act.Relay, sel)
		if err != nil {
			return err
		}
		logger.Info("console: dead letters replayed", zap.Int("replayed", n))
		return ops.WriteJSON(w, http.StatusOK, map[string]int{"replayed": n})
	}

	n, err := ops.DeleteSelected(r.Context(), act.Relay, sel)
	logger.Info("console: dead letters deleted", zap.Int("deleted", n))
	if err != nil {
		return err
	}
	return ops.WriteJSON(w, http.StatusOK, map[string]int{"deleted": n})
}

// pause pauses (endpoint "pause") or resumes a relay's destination, or
// all of them, and answers the destinations as they are now. The caller
// has checked the origin and the content type.
func (c *Console) pause(w http.ResponseWriter, r *http.Request, endpoint string) error {
	var req struct {
		Relay       string `json:"relay"`
		Destination string `json:"destination"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return apiError(http.StatusBadRequest, `want {"relay": "<name>", "destination": "<name>"}, or without "destination" for all of them`)
	}
	res, err := ops.SetPaused(r.Context(), req.Relay, req.Destination, endpoint == "pause")
	if err != nil {
		return err
	}
	msg := "console: destination resumed"
	if endpoint == "pause" {
		msg = "console: destination paused"
	}
	c.logger.Info(msg, zap.String("relay", req.Relay), zap.String("destination", req.Destination),
		zap.String("user", userOf(r)), zap.String("remote_ip", remoteIP(r)))
	return ops.WriteJSON(w, http.StatusOK, res)
}

// resend delivers an event again to the destinations that have it.
func (c *Console) resend(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Relay string `json:"relay"`
		ID    string `json:"id"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return apiError(http.StatusBadRequest, `want {"relay": "<name>", "id": "<event id>"}`)
	}
	n, err := ops.Resend(r.Context(), req.Relay, req.ID)
	if err != nil {
		return err
	}
	c.logger.Info("console: event resent", zap.String("relay", req.Relay), zap.String("id", req.ID), zap.Int("deliveries", n),
		zap.String("user", userOf(r)), zap.String("remote_ip", remoteIP(r)))
	return ops.WriteJSON(w, http.StatusOK, map[string]int{"resent": n})
}

func apiError(status int, msg string) error {
	return caddy.APIError{HTTPStatus: status, Err: errors.New(msg)}
}

// userOf is the authenticated user of the request (basic_auth or
// forward_auth set it), for the log.
func userOf(r *http.Request) string {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return ""
	}
	user, _ := repl.GetString("http.auth.user.id")
	return user
}

func remoteIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
		return ip
	}
	return r.RemoteAddr
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Console)(nil)
	_ caddyhttp.MiddlewareHandler = (*Console)(nil)
)
