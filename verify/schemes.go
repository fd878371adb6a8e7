package verify

import (
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// scheme is one sender's way of signing.
type scheme struct {
	name       string
	defaultKey []string      // dedupe key sources, each covered by the signature
	headers    []string      // read by the check; stored and forwarded
	tolerance  time.Duration // for a signed timestamp; 0: none is signed
	key        func(secret string) ([]byte, error)
	// publicKey decodes a configured public key, for the schemes that
	// sign with a key pair; it replaces key.
	publicKey func(secret string) (crypto.PublicKey, error)
	// noSecret: the scheme is configured with no secret (fal publishes
	// its keys).
	noSecret bool
	// setup reads the scheme's own settings from the config; nil for most.
	setup func(v *Verifier, cfg Config, resolve func(string) (string, error)) error
	// parse checks what the headers alone show (present, well formed, the
	// signed timestamp in tolerance) and returns what the body is checked
	// against.
	parse func(v *Verifier, h http.Header, now time.Time) (signed, error)
	// check replaces the HMAC comparison of what parse returned, for the
	// schemes that sign otherwise (Ed25519, ECDSA, the URL Twilio called,
	// a plain token); nil for the HMAC schemes.
	check func(v *Verifier, s signed, r *http.Request, body []byte) error
	// after checks what only a signed body shows (Linear's timestamp);
	// nil for most.
	after func(v *Verifier, body []byte, now time.Time) error
	// get answers the scheme's GET handshake; nil: the scheme has none,
	// and GET is refused (405).
	get func(v *Verifier, r *http.Request) (*Answer, error)
	// handshake answers a verified POST that is the scheme's handshake;
	// nil, nil for a payload. nil: the scheme has none.
	handshake func(v *Verifier, r *http.Request, body []byte) (*Answer, error)
}

// signed is what a request's headers say was signed: the signatures, the
// header they came in, and the parts signed before the body.
type signed struct {
	sigs   [][]byte
	header string
	before [][]byte
	at     time.Time // when the check runs, for the schemes that fetch keys (fal)
}

var schemes = map[string]*scheme{
	"standard_webhooks": {
		name:       "standard_webhooks",
		defaultKey: []string{"header.webhook-id"},
		headers:    []string{"webhook-id", "webhook-timestamp", "webhook-signature"},
		tolerance:  5 * time.Minute,
		key:        whsecKey,
		parse:      parseStandard("webhook-id", "webhook-timestamp", "webhook-signature"),
	},
	"svix": {
		name:       "svix",
		defaultKey: []string{"header.svix-id"},
		headers:    []string{"svix-id", "svix-timestamp", "svix-signature"},
		tolerance:  5 * time.Minute,
		key:        whsecKey,
		parse:      parseStandard("svix-id", "svix-timestamp", "svix-signature"),
	},
	"stripe": {
		name:       "stripe",
		defaultKey: []string{"json.id"},
		headers:    []string{"Stripe-Signature"},
		tolerance:  5 * time.Minute,
		key:        rawKey,
		parse:      parseTimestamped("Stripe-Signature", ",", "t", "v1", "."),
	},
	"github": {
		name:       "github",
		defaultKey: []string{"body"}, // X-GitHub-Delivery is not signed: a replay with a new one would pass
		headers: []string{"X-Hub-Signature-256", "X-GitHub-Event", "X-GitHub-Delivery", "X-GitHub-Hook-ID",
			"X-GitHub-Hook-Installation-Target-ID", "X-GitHub-Hook-Installation-Target-Type"},
		key:   rawKey,
		parse: parseBodyMAC("X-Hub-Signature-256", "sha256=", hex.DecodeString, "sha256=<hex>"),
	},
	"shopify": {
		name:       "shopify",
		defaultKey: []string{"body"}, // X-Shopify-Webhook-Id is not signed
		headers: []string{"X-Shopify-Hmac-Sha256", "X-Shopify-Topic", "X-Shopify-Shop-Domain", "X-Shopify-Webhook-Id",
			"X-Shopify-Event-Id", "X-Shopify-API-Version", "X-Shopify-Triggered-At"},
		key:   rawKey,
		parse: parseBodyMAC("X-Shopify-Hmac-Sha256", "", base64.StdEncoding.DecodeString, "<base64>"),
	},
	"slack": {
		name:       "slack",
		defaultKey: []string{"json.event_id"},
		headers:    []string{"X-Slack-Signature", "X-Slack-Request-Timestamp"},
		tolerance:  5 * time.Minute,
		key:        rawKey,
		parse:      parseSignedTime(slackV0),
		handshake:  slackHandshake,
	},
	"paddle": {
		name:       "paddle",
		defaultKey: []string{"json.event_id"},
		headers:    []string{"Paddle-Signature"},
		// Paddle's SDKs allow five seconds: Paddle sends straight to the
		// relay, so only clock skew and the network count.
		tolerance: 5 * time.Second,
		key:       rawKey,
		parse:     parseTimestamped("Paddle-Signature", ";", "ts", "h1", ":"),
	},
	"linear": {
		name:       "linear",
		defaultKey: linearKey,
		headers:    []string{"Linear-Signature", "Linear-Delivery", "Linear-Event"},
		// Linear signs the body, which carries webhookTimestamp; its SDK
		// allows a minute.
		tolerance: time.Minute,
		key:       rawKey,
		parse:     parseLinear,
		after:     linearTimestamp,
	},
	"discord":    discord,
	"sendgrid":   sendgrid,
	"fal":        fal,
	"zoom":       zoomScheme,
	"meta":       metaScheme,
	"twitter":    twitterScheme,
	"elevenlabs": elevenlabsScheme,
	"gitlab":     gitlabScheme,
	"twilio":     twilioScheme,
	"openai":     standardPreset("openai"),
	"replicate":  standardPreset("replicate"),
	"clerk":      svixPreset("clerk"),
	"resend":     svixPreset("resend"),
	"hmac": {
		name:  "hmac",
		key:   rawKey,
		parse: parseHMAC,
	},
}

// linearKey is Linear's default dedupe key. Linear-Delivery is not signed,
// and each retry is signed again with a new webhookTimestamp, so neither it
// nor the body hash will do: the event's own signed fields, which a retry
// repeats (webhookId names the webhook, not the event).
var linearKey = []string{"json.type", "json.action", "json.data.id", "json.createdAt"}

// TakesSecrets reports whether the scheme is configured with secrets (all
// but fal, which fetches the keys it signs with); true for a name that is
// no scheme, which New refuses anyway.
func TakesSecrets(scheme string) bool {
	s, ok := schemes[scheme]
	return !ok || !s.noSecret
}

// SchemeNames lists the schemes, sorted.
func SchemeNames() []string {
	names := make([]string, 0, len(schemes))
	for n := range schemes {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func sha256New() hash.Hash { return sha256.New() }

// rawKey uses the secret's bytes as the key, as most senders do.
func rawKey(secret string) ([]byte, error) { return []byte(secret), nil }

// whsecKey decodes a Standard Webhooks secret: "whsec_" and the key in
// base64 (the prefix is optional, as in the reference libraries).
func whsecKey(secret string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || len(key) == 0 {
		return nil, errors.New(`want "whsec_" followed by the key in base64, as the sender's dashboard shows it`)
	}
	return key, nil
}

// header returns h's field name, or fails saying it is missing.
func header(h http.Header, name string) (string, error) {
	v := h.Get(name)
	if v == "" {
		return "", failf("the signature header %s is missing", name)
	}
	return v, nil
}

// headerTime reads a header holding a signed timestamp in seconds since
// 1970: its text, as signed, and its time.
func headerTime(h http.Header, name string) (string, time.Time, error) {
	raw, err := header(h, name)
	if err != nil {
		return "", time.Time{}, err
	}
	ts, ok := unixSeconds(raw)
	if !ok {
		return "", time.Time{}, failf("%s is malformed: want seconds since 1970", name)
	}
	return raw, ts, nil
}

// unixSeconds parses a signed timestamp in seconds since the epoch.
func unixSeconds(s string) (time.Time, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}

// parseStandard reads a Standard Webhooks signature (Svix's is the same
// under other header names): HMAC-SHA256 of "id.timestamp.body", sent as a
// space-separated list of "v1,<base64>".
func parseStandard(idH, tsH, sigH string) func(*Verifier, http.Header, time.Time) (signed, error) {
	return func(v *Verifier, h http.Header, now time.Time) (signed, error) {
		id, err := header(h, idH)
		if err != nil {
			return signed{}, err
		}
		tsRaw, ts, err := headerTime(h, tsH)
		if err != nil {
			return signed{}, err
		}
		sigRaw, err := header(h, sigH)
		if err != nil {
			return signed{}, err
		}
		if err := v.within(ts, now); err != nil {
			return signed{}, err
		}
		var sigs [][]byte
		for _, part := range strings.Fields(sigRaw) {
			version, sig, ok := strings.Cut(part, ",")
			if !ok {
				return signed{}, failf("%s is malformed: want space-separated v1,<base64> signatures", sigH)
			}
			if version != "v1" {
				continue // other versions are not HMAC-SHA256
			}
			if b, err := base64.StdEncoding.DecodeString(sig); err == nil {
				sigs = append(sigs, b)
			}
		}
		if len(sigs) == 0 {
			return signed{}, failf("%s is malformed: no v1,<base64> signature in it", sigH)
		}
		return signed{sigs: sigs, header: sigH, before: [][]byte{[]byte(id), []byte("."), []byte(tsRaw), []byte(".")}}, nil
	}
}

// parseTimestamped reads a header listing a timestamp and hex signatures
// as key=value items, each signature the HMAC-SHA256 of the timestamp, a
// separator and the body: Stripe's "t=<ts>,v1=<hex>[,v1=...]" over
// "ts.body" (other schemes in it, such as v0, are ignored), Paddle's
// "ts=<ts>;h1=<hex>[;h1=...]" over "ts:body" (several while a secret is
// rotated).
func parseTimestamped(name, itemSep, tsKey, sigKey, joiner string) func(*Verifier, http.Header, time.Time) (signed, error) {
	form := fmt.Sprintf("%s=<timestamp>%s%s=<hex signature>", tsKey, itemSep, sigKey)
	return func(v *Verifier, h http.Header, now time.Time) (signed, error) {
		raw, err := header(h, name)
		if err != nil {
			return signed{}, err
		}
		var tsRaw string
		var sigs [][]byte
		for _, item := range strings.Split(raw, itemSep) {
			k, val, _ := strings.Cut(strings.TrimSpace(item), "=")
			switch k {
			case tsKey:
				tsRaw = val
			case sigKey:
				if b, err := hex.DecodeString(val); err == nil {
					sigs = append(sigs, b)
				}
			}
		}
		ts, ok := unixSeconds(tsRaw)
		if !ok || len(sigs) == 0 {
			return signed{}, failf("%s is malformed: want %s", name, form)
		}
		if err := v.within(ts, now); err != nil {
			return signed{}, err
		}
		return signed{sigs: sigs, header: name, before: [][]byte{[]byte(tsRaw), []byte(joiner)}}, nil
	}
}

// parseBodyMAC reads a header that carries the HMAC-SHA256 of the body
// alone, after a fixed prefix (GitHub's "sha256=", none for Shopify).
func parseBodyMAC(name, prefix string, decode func(string) ([]byte, error), form string) func(*Verifier, http.Header, time.Time) (signed, error) {
	return func(v *Verifier, h http.Header, _ time.Time) (signed, error) {
		return bodyMAC(h, name, prefix, decode, form)
	}
}

func bodyMAC(h http.Header, name, prefix string, decode func(string) ([]byte, error), form string) (signed, error) {
	raw, err := header(h, name)
	if err != nil {
		return signed{}, err
	}
	enc, ok := strings.CutPrefix(strings.TrimSpace(raw), prefix)
	sig, err := decode(enc)
	if !ok || err != nil || len(sig) == 0 {
		return signed{}, failf("%s is malformed: want %s", name, form)
	}
	return signed{sigs: [][]byte{sig}, header: name}, nil
}

// parseLinear reads Linear-Signature, the hex HMAC-SHA256 of the body; the
// timestamp is in the body (linearTimestamp).
func parseLinear(v *Verifier, h http.Header, _ time.Time) (signed, error) {
	return bodyMAC(h, "Linear-Signature", "", hex.DecodeString, "<hex>")
}

// linearTimestamp checks the signed body's webhookTimestamp
// (milliseconds).
func linearTimestamp(v *Verifier, body []byte, now time.Time) error {
	var doc struct {
		WebhookTimestamp json.Number `json:"webhookTimestamp"`
	}
	ms, err := int64(0), json.Unmarshal(body, &doc)
	if err == nil {
		ms, err = doc.WebhookTimestamp.Int64()
	}
	if err != nil || ms <= 0 {
		return failf("the body's webhookTimestamp is missing or not milliseconds since 1970")
	}
	return v.within(time.UnixMilli(ms), now)
}

// StandardKey decodes a Standard Webhooks secret ("whsec_" + base64), for
// signing with SignStandard.
func StandardKey(secret string) ([]byte, error) { return whsecKey(secret) }

// SignStandard returns the webhook-signature value of a Standard Webhooks
// message: "v1," and the base64 HMAC-SHA256 of "id.timestamp.body", which
// any Standard Webhooks library verifies.
func SignStandard(key []byte, id string, timestamp time.Time, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id))
	m.Write([]byte("."))
	m.Write(strconv.AppendInt(nil, timestamp.Unix(), 10))
	m.Write([]byte("."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// signedTime describes a scheme that signs a timestamp sent in a header of
// its own: the signature header, the timestamp header (seconds since
// 1970), how the signature is written (decode; form says it for people),
// and what is signed ahead of the body, given the timestamp as sent.
type signedTime struct {
	sigH, tsH string
	form      string
	decode    func(string) ([]byte, bool)
	before    func(ts string) [][]byte
}

// read reads the two headers, without the tolerance.
func (st signedTime) read(h http.Header) (signed, time.Time, error) {
	raw, err := header(h, st.sigH)
	if err != nil {
		return signed{}, time.Time{}, err
	}
	tsRaw, ts, err := headerTime(h, st.tsH)
	if err != nil {
		return signed{}, time.Time{}, err
	}
	sig, ok := st.decode(strings.TrimSpace(raw))
	if !ok {
		return signed{}, time.Time{}, failf("%s is malformed: want %s", st.sigH, st.form)
	}
	return signed{sigs: [][]byte{sig}, header: st.sigH, before: st.before(tsRaw)}, ts, nil
}

// parseSignedTime is the parse of a signedTime scheme: the headers, and the
// timestamp within the tolerance.
func parseSignedTime(st signedTime) func(*Verifier, http.Header, time.Time) (signed, error) {
	return func(v *Verifier, h http.Header, now time.Time) (signed, error) {
		s, ts, err := st.read(h)
		if err != nil {
			return signed{}, err
		}
		if err := v.within(ts, now); err != nil {
			return signed{}, err
		}
		return s, nil
	}
}

// v0Signed is Slack's and Zoom's way: "v0=<hex>" of "v0:timestamp:body".
func v0Signed(sigH, tsH string) signedTime {
	return signedTime{sigH: sigH, tsH: tsH, form: "v0=<hex>",
		decode: func(raw string) ([]byte, bool) {
			enc, ok := strings.CutPrefix(raw, "v0=")
			sig, err := hex.DecodeString(enc)
			return sig, ok && err == nil && len(sig) > 0
		},
		before: func(ts string) [][]byte { return [][]byte{[]byte("v0:"), []byte(ts), []byte(":")} },
	}
}

// slackV0 is Slack's signature: X-Slack-Signature over
// "v0:X-Slack-Request-Timestamp:body".
var slackV0 = v0Signed("X-Slack-Signature", "X-Slack-Request-Timestamp")

// timestampFirst is what Discord and SendGrid sign ahead of the body: the
// timestamp as sent.
func timestampFirst(ts string) [][]byte { return [][]byte{[]byte(ts)} }
