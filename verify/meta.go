package verify

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
)

// meta: X-Hub-Signature-256 "sha256=<hex>", the HMAC-SHA256 of the body
// under the app secret. Meta checks the URL with a GET carrying
// hub.verify_token and hub.challenge, answered here when verify_token is
// configured.
var metaScheme = &scheme{
	name:       "meta",
	defaultKey: []string{"body"}, // Meta sends no delivery id; a retry repeats the body
	headers:    []string{"X-Hub-Signature-256"},
	key:        rawKey,
	parse:      parseBodyMAC("X-Hub-Signature-256", "sha256=", hex.DecodeString, "sha256=<hex>"),
	setup:      setupMeta,
	get:        metaSubscribe,
}

// metaSubscribe answers Meta's verification request:
// ?hub.mode=subscribe&hub.verify_token=<t>&hub.challenge=<c> is answered
// with <c> when <t> is the verify_token.
func metaSubscribe(v *Verifier, r *http.Request) (*Answer, error) {
	if v.verifyToken == nil {
		return nil, refusef(http.StatusMethodNotAllowed, "verify meta answers GET only with verify_token configured")
	}
	q := r.URL.Query()
	var missing []string
	for _, p := range []string{"hub.mode", "hub.verify_token", "hub.challenge"} {
		if q.Get(p) == "" {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return nil, refusef(http.StatusBadRequest, "not Meta's verification request: %s missing from the query", strings.Join(missing, ", "))
	}
	if mode := q.Get("hub.mode"); mode != "subscribe" {
		return nil, refusef(http.StatusBadRequest, "hub.mode is %q, want subscribe", mode)
	}
	got := sha256.Sum256([]byte(q.Get("hub.verify_token")))
	if subtle.ConstantTimeCompare(got[:], v.verifyToken[:]) != 1 {
		return nil, refusef(http.StatusForbidden, "hub.verify_token is wrong: it is not the verify_token configured for this relay")
	}
	return &Answer{Status: http.StatusOK, ContentType: "text/plain; charset=utf-8", Body: []byte(q.Get("hub.challenge")), NoSniff: true}, nil
}
