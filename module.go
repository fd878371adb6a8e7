// Package webhookrelay is a Caddy HTTP handler that takes over the receiving
// end of webhooks: it checks the auth parameters in the query string, drops
// duplicate deliveries, stores each payload durably and answers 200 at once,
// then forwards the payload to the upstream in the background until the
// upstream takes it.
//
// A 200 from the relay is a promise: the sender will not retry, so the
// payload is stored before the 200 and reaches the upstream at least once.
package webhookrelay

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/hookrelay/caddy-webhook-relay/verify"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/hookrelay/caddy-webhook-relay/dedupe"
	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/queue/bolt"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the optional settings.
const (
	DefaultName           = "default"
	DefaultWindow         = 24 * time.Hour
	DefaultMaxBody        = 32 << 20
	DefaultMaxBacklog     = 100000
	DefaultTimeout        = 30 * time.Second
	DefaultConcurrency    = 16
	DefaultBackoffInitial = 250 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
	DefaultGiveUpAfter    = 72 * time.Hour
	DefaultMaxMemory      = 256 << 20
	DefaultBodyTimeout    = 30 * time.Second
	DefaultMaxDead        = 100000
	DefaultDeadRetention  = 720 * time.Hour
	DefaultMaxStored      = 2 << 30
	DefaultHistory        = 24 * time.Hour
)

// Handler receives webhooks, acknowledges them once they are stored and
// forwards them to Upstream in the background. It never calls the next
// handler.
type Handler struct {
	// Upstream is the URL payloads are forwarded to (http or https),
	// e.g. "http://localhost:3000/hooks/runware". Its own query parameters
	// are kept; the incoming ones, minus the auth parameters and any named
	// like one of its own, are added.
	// Placeholders such as {env.UPSTREAM} are resolved at provision time.
	// It is shorthand for a destination named "upstream" with this URL;
	// give it or Destinations, not both.
	Upstream string `json:"upstream,omitempty"`

	// Destinations are where payloads are delivered, each with its name,
	// URL, filter, rate and delivery settings (which default to the
	// relay's). Names are unique within a relay. For now a relay takes one
	// destination (several are refused: use one relay per destination).
	// A payload its filter does not take is answered 200
	// {"status":"ignored"}, its key marked seen, nothing stored.
	Destinations []Destination `json:"destinations,omitempty"`

	// Name identifies this relay's queue and dedupe state in the store,
	// the admin API and the metrics. The name, not the upstream, owns the
	// queue: changing the upstream in a reload sends the waiting backlog
	// to the new upstream. Letters, digits, '.', '_' and '-'; default
	// "default". Two different relays in one config need distinct names.
	Name string `json:"name,omitempty"`

	// AuthQuery maps query parameter names to the secrets they may carry.
	// A request passes only if every listed parameter is present once and
	// equals one of its secrets (listing several allows rotation).
	// Secrets are written as placeholders, e.g. "{env.WEBHOOK_TOKEN}", and
	// one that resolves to empty is a configuration error.
	AuthQuery map[string][]string `json:"auth_query,omitempty"`

	// AuthHeader maps request header names to the values they may carry,
	// e.g. {"Authorization": ["Bearer {env.LEONARDO_TOKEN}"]}. A request
	// passes only if every listed header is present once and equals one of
	// its values (several allow rotation), compared in constant time before
	// the body is read. Values are written as placeholders; one that
	// resolves to empty is a configuration error. The header is never
	// stored or forwarded: naming it in forward_headers or key is a
	// configuration error.
	AuthHeader map[string][]string `json:"auth_header,omitempty"`

	// AuthBasic maps HTTP Basic user names to the passwords they may use,
	// e.g. {"deepgram": ["{env.DEEPGRAM_PASSWORD}"]}. A request passes only
	// with one Authorization header carrying Basic credentials of a listed
	// user and one of its passwords (several allow rotation), compared in
	// constant time over SHA-256 digests (no bcrypt per request) before the
	// body is read; otherwise 401 with WWW-Authenticate: Basic
	// realm="webhook_relay". Passwords are written as placeholders; one that
	// resolves to empty is a configuration error.
	AuthBasic map[string][]string `json:"auth_basic,omitempty"`

	// Verify checks the sender's signature on the raw body before anything
	// is stored: a provider's scheme (standard_webhooks, svix, stripe,
	// github, shopify, slack, paddle, linear) or a generic hmac. A request
	// that fails gets 401. Without Key, the scheme's delivery or event id
	// is the dedupe key. With AuthQuery too, both must pass. Where the
	// sender checks the URL with a handshake (Slack's url_verification),
	// the relay answers it once the check passed, and keeps nothing of it.
	Verify *verify.Config `json:"verify,omitempty"`

	// Challenge answers the URL handshake of a sender that does not sign
	// it, which no verify scheme does: "graph" (Microsoft Graph, and
	// SharePoint and OneDrive, validating a subscription: a POST with the
	// query parameter validationToken, answered 200 with the token, decoded,
	// as text/plain) or "dropbox" (Dropbox's verification request: a GET
	// with the query parameter challenge, answered 200 with it as
	// text/plain, X-Content-Type-Options: nosniff). One kind per relay. The
	// handshake runs after AuthQuery, AuthHeader and AuthBasic, and is
	// never stored, deduped or forwarded; a POST without validationToken
	// is a notification like any other.
	Challenge string `json:"challenge,omitempty"`

	// Key lists where the dedupe key comes from, combined in order:
	// "runware" (default), "json.<dot.path>", "header.<Name>",
	// "query.<name>", "body" (SHA-256 of the body). When no source yields
	// a value the key is the body hash.
	Key []string `json:"key,omitempty"`

	// Window is how long a key stays seen, so that a re-delivery is
	// answered "duplicate". Default 24h.
	Window caddy.Duration `json:"window,omitempty"`

	// StoreRaw is where markers, queue and dead letters are kept: a module
	// in the http.webhook_relay.stores namespace: "bolt" (the default, a file
	// under Caddy's data directory), "redis" (several instances sharing one
	// Redis) or "memory" (tests only: nothing survives a restart).
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.webhook_relay.stores inline_key=type"`

	// MaxBody is the largest body accepted, in bytes; larger ones get 413.
	// Default 32 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// MaxBacklog bounds the payloads queued but not yet delivered; beyond
	// it requests get 503 with Retry-After. Default 100000.
	MaxBacklog int `json:"max_backlog,omitempty"`

	// Timeout bounds one delivery attempt. Default 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Concurrency bounds the delivery attempts running at once for this
	// relay. Default 16.
	Concurrency int `json:"concurrency,omitempty"`

	// BackoffInitial is the wait after the first failed attempt; it doubles
	// with each failure up to BackoffMax, +-20% jitter. A Retry-After from
	// the upstream is honoured when longer. Default 250ms.
	BackoffInitial caddy.Duration `json:"backoff_initial,omitempty"`

	// BackoffMax caps the wait between attempts. Default 30s.
	BackoffMax caddy.Duration `json:"backoff_max,omitempty"`

	// GiveUpAfter is how long a payload keeps being retried before it is
	// moved to the dead letters. Default 72h.
	GiveUpAfter caddy.Duration `json:"give_up_after,omitempty"`

	// HeaderUp are extra headers set on every forwarded request. Values
	// may use placeholders such as {env.UPSTREAM_TOKEN}.
	HeaderUp http.Header `json:"header_up,omitempty"`

	// ForwardHeaders lists incoming headers to store with each payload
	// and send upstream with it, besides the verify scheme's own (which
	// always are).
	ForwardHeaders []string `json:"forward_headers,omitempty"`

	// SignUpstream is a Standard Webhooks secret ("whsec_" and base64,
	// usually a placeholder). With it every delivery attempt is signed:
	// webhook-id (the Idempotency-Key), webhook-timestamp (the attempt's
	// time) and webhook-signature, so the app verifies the relay with any
	// Standard Webhooks library, however late the delivery.
	SignUpstream string `json:"sign_upstream,omitempty"`

	// MaxMemory bounds the bytes of bodies this relay holds in memory at
	// once: bodies being received and stored, and bodies loaded to be sent
	// upstream (payloads waiting for delivery are held without them). A
	// request that would go past it gets 503 with Retry-After. Delivery
	// always leaves MaxBody of it to incoming webhooks; receiving never
	// takes a quarter of it (at least MaxBody), and one client address
	// holds at most an eighth of it (at least MaxBody) while its bodies
	// arrive. At least MaxBody.
	// Default 256 MiB.
	MaxMemory int64 `json:"max_memory,omitempty"`

	// BodyTimeout bounds reading one request body; a sender that has not
	// sent the whole body by then gets 408. Default 30s.
	BodyTimeout caddy.Duration `json:"body_timeout,omitempty"`

	// MaxDead bounds the dead letters kept; past it the oldest are
	// removed, each logged and counted in
	// caddy_webhook_relay_dead_dropped_total. Default 100000.
	MaxDead int `json:"max_dead,omitempty"`

	// DeadRetention is how long a dead letter is kept after it died;
	// older ones are removed, logged and counted the same way. Default
	// 720h (30 days).
	DeadRetention caddy.Duration `json:"dead_retention,omitempty"`

	// MaxStored bounds the bytes the relay keeps in its store: the bodies
	// and kept headers of queued payloads and of dead letters. A payload
	// that would go past it makes the oldest dead letters give way (each
	// counted in caddy_webhook_relay_dead_dropped_total, logged once while
	// it goes on); when that is not enough it gets 503 with Retry-After.
	// At least MaxBody. Default 2 GiB.
	MaxStored int64 `json:"max_stored,omitempty"`

	// History is how long each payload's record (its deliveries' states
	// and attempts) and its body are kept after it was delivered to every
	// destination (or died), for the events API, the console and the
	// command line; within MaxStored, where records of delivered payloads
	// give way first. Default 24h.
	History caddy.Duration `json:"history,omitempty"`
	// HistoryOff keeps no records at all.
	HistoryOff bool `json:"history_off,omitempty"`

	keyer       *dedupe.Keyer
	auth        []authParam
	authHeaders []authHeader
	basicUsers  []basicUser
	verifier    *verify.Verifier
	handshaker  handshaker       // the verifier's handshakes; nil without verify
	keep        []string         // canonical names of the incoming headers stored with a payload
	signKey     []byte           // sign_upstream's key
	dests       []*destination   // resolved; one for now
	parseBody   func([]byte) any // what the filters see of the body (bodyParser)
	parseQuery  bool             // a filter reads the query
	relay       *pooledRelay
	poolConfig  *relayConfig   // what the relay applies of this config
	admitter    queue.Admitter // the relay's store, as the ack path sees it
	poolKey     string
	events      *configEvents // this config's events app, which the relay's events go to once it runs
	configCtx   caddy.Context
	nameTaken   bool
	metrics     *relayMetrics
	logger      *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.webhook_relay",
		New: func() caddy.Module { return new(Handler) },
	}
}

var validName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Provision resolves placeholders, checks the settings and attaches to the
// relay's store and delivery workers, which outlive config reloads.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.configCtx = ctx
	h.applyDefaults()
	if err := h.checkSettings(); err != nil {
		return err
	}
	repl := caddy.NewReplacer()

	dests, err := h.destinationList()
	if err != nil {
		return err
	}
	if err := checkDestinations(dests); err != nil {
		return err
	}
	if h.auth, err = compileAuth(repl, h.AuthQuery); err != nil {
		return err
	}
	if h.authHeaders, err = compileAuthHeaders(repl, h.AuthHeader); err != nil {
		return err
	}
	if h.basicUsers, err = compileAuthBasic(repl, h.AuthBasic); err != nil {
		return err
	}
	if h.Verify != nil {
		resolve := func(s string) (string, error) { return repl.ReplaceOrErr(s, true, true) }
		if h.verifier, err = verify.New(*h.Verify, resolve, verify.WithLogger(h.logger.With(zap.String("relay", h.Name)))); err != nil {
			return err
		}
		h.handshaker = h.verifier
	}
	if len(h.auth) == 0 && len(h.authHeaders) == 0 && len(h.basicUsers) == 0 && h.verifier == nil {
		h.logger.Warn("no auth_query, auth_header, auth_basic or verify configured: anyone who finds this URL can queue payloads", zap.String("relay", h.Name))
	}
	keySources := h.Key
	if len(keySources) == 0 && h.verifier != nil {
		keySources = h.verifier.DefaultKey()
	}
	if h.keyer, err = dedupe.NewKeyer(keySources); err != nil {
		return fmt.Errorf("key: %v", err)
	}
	if err := checkKeyHasNoSecret(keySources, h.AuthQuery); err != nil {
		return err
	}
	var verifyHeaders []string
	if h.verifier != nil {
		verifyHeaders = h.verifier.Headers()
	}
	if err := checkAuthHeaderConflicts(h.authHeaders, len(h.basicUsers) > 0, verifyHeaders, h.ForwardHeaders, keySources); err != nil {
		return err
	}
	if h.verifier != nil {
		if err := checkVerifySecretHeaders(h.verifier, h.authHeaders, h.ForwardHeaders, keySources); err != nil {
			return err
		}
	}
	if h.verifier != nil && time.Duration(h.Window) < h.verifier.Tolerance() {
		h.logger.Warn("window is shorter than the verify scheme's tolerance: a captured request replayed after its key "+
			"is forgotten, and still within the tolerance, is accepted again; make window at least the tolerance",
			zap.String("relay", h.Name), zap.String("scheme", h.verifier.Scheme()),
			zap.Stringer("window", time.Duration(h.Window)), zap.Stringer("tolerance", h.verifier.Tolerance()))
	}
	headerUp, err := resolveHeaderUp(repl, h.HeaderUp)
	if err != nil {
		return err
	}
	if h.keep, err = keptHeaders(h.verifier, h.ForwardHeaders); err != nil {
		return err
	}
	if h.SignUpstream != "" {
		secret, err := repl.ReplaceOrErr(h.SignUpstream, true, true)
		if err != nil || secret == "" {
			return fmt.Errorf("sign_upstream: the secret resolves to empty or has an empty placeholder (%s); set it", placeholderNames(h.SignUpstream))
		}
		if h.signKey, err = verify.StandardKey(secret); err != nil {
			return fmt.Errorf("sign_upstream: %v", err)
		}
	}
	for _, d := range dests {
		dest, err := h.resolveDestination(repl, d, headerUp)
		if err != nil {
			return err
		}
		h.dests = append(h.dests, dest)
	}
	h.parseBody = bodyParser(h.keyer, h.dests)
	h.parseQuery = anyFilterReadsQuery(h.dests)
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	h.metrics = newRelayMetrics(h.Name)
	poolDests := make([]*destConfig, len(h.dests))
	for i, d := range h.dests {
		m := h.metrics.destination(d.name)
		d.filterErrors = m.filterErrors
		poolDests[i] = &destConfig{name: d.name, settings: d.settings, observe: m.delivery}
	}

	// Names are compared before the store module is loaded: loading it
	// clears StoreRaw, and two relays differing only in their store are
	// two relays.
	if err := claimName(ctx, h); err != nil {
		return err
	}
	h.nameTaken = true
	store, err := h.loadStore(ctx)
	if err != nil {
		return err
	}
	h.poolConfig = &relayConfig{dests: poolDests,
		window: time.Duration(h.Window), maxBacklog: h.MaxBacklog,
		maxMemory: h.MaxMemory, maxBody: h.MaxBody, maxStored: h.MaxStored, history: h.history()}
	h.poolKey = "webhook_relay:" + h.Name + ":" + store.StoreIdentity(h.Name)
	h.relay, err = acquireRelay(h.poolKey, relayOpening{
		name:    h.Name,
		backend: store,
		opts: queue.Options{Window: time.Duration(h.Window), MaxBacklog: h.MaxBacklog, MaxStored: h.MaxStored,
			History: h.history()},
		logger:      ctx.Logger(),
		deadDropped: h.metrics.deadDropped,
		deadEvicted: h.metrics.deadEvicted,
		totals:      h.metrics.totals,
	}, h.poolConfig)
	if err != nil {
		h.poolKey = ""
		return err
	}
	h.admitter = h.relay.store
	h.relay.attach(h.poolConfig)
	return h.subscribeEvents(ctx)
}

// history is how long the store keeps records: 0 when they are off.
func (h *Handler) history() time.Duration {
	if h.HistoryOff {
		return 0
	}
	return time.Duration(h.History)
}

func (h *Handler) applyDefaults() {
	if h.Name == "" {
		h.Name = DefaultName
	}
	if h.Window == 0 {
		h.Window = caddy.Duration(DefaultWindow)
	}
	if h.MaxBody == 0 {
		h.MaxBody = DefaultMaxBody
	}
	if h.MaxBacklog == 0 {
		h.MaxBacklog = DefaultMaxBacklog
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(DefaultTimeout)
	}
	if h.Concurrency == 0 {
		h.Concurrency = DefaultConcurrency
	}
	if h.BackoffInitial == 0 {
		h.BackoffInitial = caddy.Duration(DefaultBackoffInitial)
	}
	if h.BackoffMax == 0 {
		h.BackoffMax = caddy.Duration(DefaultBackoffMax)
	}
	if h.GiveUpAfter == 0 {
		h.GiveUpAfter = caddy.Duration(DefaultGiveUpAfter)
	}
	if h.MaxMemory == 0 {
		h.MaxMemory = DefaultMaxMemory
	}
	if h.BodyTimeout == 0 {
		h.BodyTimeout = caddy.Duration(DefaultBodyTimeout)
	}
	if h.MaxDead == 0 {
		h.MaxDead = DefaultMaxDead
	}
	if h.DeadRetention == 0 {
		h.DeadRetention = caddy.Duration(DefaultDeadRetention)
	}
	if h.History == 0 {
		h.History = caddy.Duration(DefaultHistory)
	}
	if h.MaxStored == 0 {
		h.MaxStored = DefaultMaxStored
	}
}

// checkSettings rejects values that cannot work, before anything is opened.
func (h *Handler) checkSettings() error {
	switch {
	case !validName.MatchString(h.Name):
		return fmt.Errorf("name %q: use 1 to 64 letters, digits, '.', '_' or '-'", h.Name)
	case h.Window < 0, h.Timeout < 0, h.BackoffInitial < 0, h.BackoffMax < 0, h.GiveUpAfter < 0,
		h.BodyTimeout < 0, h.DeadRetention < 0:
		return fmt.Errorf("window, timeout, backoff, give_up_after, body_timeout and dead_retention must be positive durations")
	case h.MaxBody < 0, h.MaxMemory < 0:
		return fmt.Errorf("max_body and max_memory must be positive")
	case h.MaxBody > h.MaxMemory:
		return fmt.Errorf("max_body (%d bytes) is larger than max_memory (%d bytes): such a body could never be held; "+
			"raise max_memory or lower max_body", h.MaxBody, h.MaxMemory)
	case h.MaxStored < 0:
		return fmt.Errorf("max_stored must be positive")
	case h.History < 0:
		return fmt.Errorf("history must be a positive duration (or history off)")
	case h.MaxBody > h.MaxStored:
		return fmt.Errorf("max_body (%d bytes) is larger than max_stored (%d bytes): such a body could never be stored; "+
			"raise max_stored or lower max_body", h.MaxBody, h.MaxStored)
	case h.MaxDead < 0:
		return fmt.Errorf("max_dead must be positive")
	case h.MaxBacklog < 0:
		return fmt.Errorf("max_backlog must be positive")
	case h.Concurrency < 0:
		return fmt.Errorf("concurrency must be positive")
	case h.BackoffInitial > h.BackoffMax:
		return fmt.Errorf("backoff: initial %s is longer than max %s",
			time.Duration(h.BackoffInitial), time.Duration(h.BackoffMax))
	}
	return checkChallenge(h.Challenge)
}

// resolveUpstream resolves placeholders in the upstream and checks it is an
// absolute http(s) URL.
func resolveUpstream(repl *caddy.Replacer, raw string) (*url.URL, error) {
	s, err := repl.ReplaceOrErr(raw, true, true)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %v", raw, err)
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %v", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("upstream %q: want an absolute http:// or https:// URL, e.g. http://localhost:3000/hooks", raw)
	}
	return u, nil
}

// credentialHeaders carry a client's credentials: a key or forward_headers
// naming one would store them with every payload and show them in the
// console and the admin API.
var credentialHeaders = map[string]bool{"Authorization": true, "Proxy-Authorization": true, "Cookie": true}

// checkKeyHasNoSecret refuses a key source that reads an auth_query
// parameter or a credentials header: the secret would become the dedupe
// key, which is sent upstream as the Idempotency-Key, stored, and shown by
// the admin API and the console.
func checkKeyHasNoSecret(sources []string, authQuery map[string][]string) error {
	for _, src := range sources {
		if name, ok := strings.CutPrefix(src, "header."); ok && credentialHeaders[http.CanonicalHeaderKey(name)] {
			return fmt.Errorf("key %s reads credentials: they would become the dedupe key (sent upstream, stored, shown by the admin API and the console); key on something else", src)
		}
		if name, ok := strings.CutPrefix(src, "query."); ok {
			if _, secret := authQuery[name]; secret {
				return fmt.Errorf("key %s reads the auth_query parameter %s: its secret would become the dedupe key (sent upstream, stored, shown by the admin API); key on something else", src, name)
			}
		}
	}
	return nil
}

// resolveHeaderUp resolves the placeholders of header_up and checks every
// name and value, so that a bad one (a secret read with its trailing
// newline) fails the config now instead of every delivery later. Errors
// name the header, never its value.
func resolveHeaderUp(repl *caddy.Replacer, cfg http.Header) (http.Header, error) {
	out := make(http.Header, len(cfg))
	for field, values := range cfg {
		if !httpguts.ValidHeaderFieldName(field) {
			return nil, fmt.Errorf("header_up %q: not a valid header name", field)
		}
		if hopByHop(field) {
			return nil, fmt.Errorf("header_up %s: a hop-by-hop header, which Go's client refuses or rewrites "+
				"(every attempt would fail as unreachable); set an end-to-end header instead", field)
		}
		for _, v := range values {
			v = repl.ReplaceKnown(v, "")
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("header_up %s: its value (placeholders resolved) holds a character a header may not carry, such as a newline; check the secret it reads", field)
			}
			out.Add(field, v)
		}
	}
	return out, nil
}

// hopByHop reports whether a header belongs to one connection (RFC 9110
// 7.6.1) rather than to the request: Connection, Keep-Alive, Te, Trailer,
// Transfer-Encoding, Upgrade, and every Proxy-* header.
func hopByHop(field string) bool {
	switch f := http.CanonicalHeaderKey(field); f {
	case "Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	default:
		return strings.HasPrefix(f, "Proxy-")
	}
}

// setByRelay are the headers of a forwarded request that the relay writes
// itself; forward_headers may not name them.
var setByRelay = map[string]bool{
	"Host": true, "Content-Length": true, "Content-Type": true, "User-Agent": true, "X-Forwarded-For": true,
	"Idempotency-Key": true, "X-Webhook-Relay-Attempt": true, "Connection": true, "Transfer-Encoding": true,
	"Te": true, "Trailer": true, "Upgrade": true, "Keep-Alive": true, "Proxy-Connection": true,
}

// checkVerifySecretHeaders refuses a config that would store, forward or
// key on a header carrying the verify scheme's secret itself (GitLab's
// X-Gitlab-Token), or check it twice with auth_header.
func checkVerifySecretHeaders(v *verify.Verifier, authHeaders []authHeader, forward, keySources []string) error {
	for _, secret := range v.SecretHeaders() {
		secret = http.CanonicalHeaderKey(secret)
		for _, f := range forward {
			if http.CanonicalHeaderKey(f) == secret {
				return fmt.Errorf("forward_headers %s: it carries the verify %s secret, which would be stored with every payload "+
					"and sent upstream; to authenticate to the upstream use header_up", f, v.Scheme())
			}
		}
		for _, src := range keySources {
			if name, ok := strings.CutPrefix(src, "header."); ok && http.CanonicalHeaderKey(name) == secret {
				return fmt.Errorf("key %s reads the verify %s secret: it would become the dedupe key (sent upstream, stored, shown by the admin API); key on something else", src, v.Scheme())
			}
		}
		for _, a := range authHeaders {
			if a.field == secret {
				return fmt.Errorf("auth_header %s: verify %s already checks this header; use one of them", a.field, v.Scheme())
			}
		}
	}
	return nil
}

// keptHeaders lists, canonical and once each, the incoming headers to store
// with a payload: the verify scheme's own, then forward_headers.
func keptHeaders(v *verify.Verifier, forward []string) ([]string, error) {
	var names []string
	if v != nil {
		names = v.Headers()
	}
	for _, f := range forward {
		switch {
		case !httpguts.ValidHeaderFieldName(f):
			return nil, fmt.Errorf("forward_headers %q: not a valid header name", f)
		case setByRelay[http.CanonicalHeaderKey(f)]:
			return nil, fmt.Errorf("forward_headers %s: the relay sets this header itself", f)
		case credentialHeaders[http.CanonicalHeaderKey(f)]:
			return nil, fmt.Errorf("forward_headers %s: it carries credentials, which would be stored with every payload "+
				"and shown in the console; to authenticate to the upstream use header_up", f)
		}
		names = append(names, f)
	}
	for i, n := range names {
		names[i] = http.CanonicalHeaderKey(n)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// loadStore loads the configured store module; without one it is the
// durable default, a bbolt file under Caddy's data directory.
func (h *Handler) loadStore(ctx caddy.Context) (queue.Backend, error) {
	if h.StoreRaw == nil {
		return &bolt.Backend{}, nil
	}
	mod, err := ctx.LoadModule(h, "StoreRaw")
	if err != nil {
		return nil, fmt.Errorf("loading store: %v", err)
	}
	return mod.(queue.Backend), nil
}

// Cleanup detaches from the relay; the last config to let go of it stops its
// workers and closes its store.
func (h *Handler) Cleanup() error {
	if h.nameTaken {
		releaseName(h.configCtx, h)
	}
	if h.relay != nil {
		if h.events != nil {
			h.relay.events.forget(h.events)
		}
		h.relay.detach(h.poolConfig)
	}
	if h.poolKey != "" {
		if _, err := relayPool.Delete(h.poolKey); err != nil {
			return fmt.Errorf("closing relay %s: %v", h.Name, err)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
