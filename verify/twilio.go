package verify

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// twilio: X-Twilio-Signature, the base64 HMAC-SHA1 under the auth token of
// the full URL Twilio called followed, for a form body, by each parameter's
// name and value sorted by name. A JSON body is signed through the URL
// instead: Twilio adds bodySHA256=<hex SHA-256 of the body> to its query,
// signs the URL alone, and the body's hash must match.
var twilioScheme = &scheme{
	name:       "twilio",
	defaultKey: []string{"body"}, // I-Twilio-Idempotency-Token is not signed
	headers:    []string{"X-Twilio-Signature", "I-Twilio-Idempotency-Token"},
	key:        rawKey,
	setup:      setupTwilio,
	parse:      parseTwilio,
	check:      checkTwilio,
}

const twilioSigHeader = "X-Twilio-Signature"

func parseTwilio(v *Verifier, h http.Header, _ time.Time) (signed, error) {
	raw, err := header(h, twilioSigHeader)
	if err != nil {
		return signed{}, err
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(raw))
	if err != nil || len(sig) != sha1.Size {
		return signed{}, failf("%s is malformed: want the base64 of an HMAC-SHA1 (20 bytes)", twilioSigHeader)
	}
	return signed{sigs: [][]byte{sig}, header: twilioSigHeader}, nil
}

func checkTwilio(v *Verifier, s signed, r *http.Request, body []byte) error {
	base, uri := v.twilioURL(r)
	query := ""
	if _, q, ok := strings.Cut(uri, "?"); ok {
		query = q
	}
	qv, _ := url.ParseQuery(query)
	bodyHash, hashed := qv["bodySHA256"]
	var params string
	switch {
	case hashed:
		// the body's hash is checked below, once the URL is known signed
	case isForm(r.Header.Get("Content-Type")):
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return failf("the form body is malformed: %v", err)
		}
		params = twilioParams(form)
	case len(body) > 0:
		return failf("Twilio signs a body only as form fields (application/x-www-form-urlencoded) or by the bodySHA256 in the URL; this body has neither, so it is not signed")
	}
	if !v.twilioMatches(s.sigs[0], base, uri, params) {
		return failf("no signature in %s matches the configured auth token(s) for the URL this request was sent to: a wrong or rotated token, "+
			"a body changed on the way, or a URL rewritten by a proxy in front (set base_url)", twilioSigHeader)
	}
	if hashed {
		want, err := hex.DecodeString(bodyHash[0])
		sum := sha256.Sum256(body)
		if len(bodyHash) != 1 || err != nil || !hmac.Equal(want, sum[:]) {
			return failf("the body's SHA-256 is not the bodySHA256 in the signed URL: a body changed on the way")
		}
	}
	return nil
}

// twilioMatches tries the URL as received, without its port and with the
// scheme's default port, as Twilio's own libraries do (Twilio signs the
// URL as configured, which may or may not name the port).
func (v *Verifier) twilioMatches(sig []byte, base *url.URL, uri, params string) bool {
	host := base.Hostname()
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	port := base.Port()
	if port == "" {
		port = map[string]string{"https": "443", "http": "80"}[base.Scheme]
	}
	for _, authority := range []string{host, host + ":" + port} {
		signedURL := base.Scheme + "://" + authority + uri
		for _, key := range v.keys {
			m := hmac.New(sha1.New, key)
			m.Write([]byte(signedURL))
			m.Write([]byte(params))
			if hmac.Equal(m.Sum(nil), sig) {
				return true
			}
		}
	}
	return false
}

// twilioURL is the URL Twilio called, as scheme and host, and the request
// URI as Caddy received it: before any handle_path or uri strip rewrote
// it, with its query. base_url replaces the scheme and host.
func (v *Verifier) twilioURL(r *http.Request) (*url.URL, string) {
	// Caddy keeps the original request's URI (not its host or TLS state,
	// which no handler rewrites) under OriginalRequestCtxKey.
	uri := r.RequestURI
	if o, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok {
		uri = o.RequestURI
		if !strings.HasPrefix(uri, "/") && o.URL != nil {
			uri = o.URL.RequestURI()
		}
	}
	if !strings.HasPrefix(uri, "/") && r.URL != nil {
		uri = r.URL.RequestURI()
	}
	if v.baseURL != nil {
		return v.baseURL, uri
	}
	base := &url.URL{Scheme: "http", Host: r.Host}
	if r.TLS != nil {
		base.Scheme = "https"
	}
	return base, uri
}

// twilioParams is the form as Twilio signs it: for each name, sorted, the
// name and each of its distinct values, sorted.
func twilioParams(form url.Values) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(form)) {
		values := slices.Compact(slices.Sorted(slices.Values(form[name])))
		for _, val := range values {
			b.WriteString(name)
			b.WriteString(val)
		}
	}
	return b.String()
}

func isForm(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/x-www-form-urlencoded"
}
