package verify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"time"
)

// zoom: x-zm-signature "v0=<hex>", the HMAC-SHA256 of
// "v0:timestamp:body" under the app's secret token, the timestamp in
// x-zm-request-timestamp. Zoom checks the URL with a signed
// endpoint.url_validation, answered here.
// zoomV0 is Zoom's signature: x-zm-signature over
// "v0:x-zm-request-timestamp:body", as Slack's.
var zoomV0 = v0Signed("x-zm-signature", "x-zm-request-timestamp")

var zoomScheme = &scheme{
	name:       "zoom",
	defaultKey: []string{"body"}, // x-zm-trackingid is not signed
	headers:    []string{"x-zm-signature", "x-zm-request-timestamp"},
	tolerance:  5 * time.Minute,
	key:        rawKey,
	parse:      parseSignedTime(zoomV0),
	handshake:  zoomValidation,
}

// zoomValidation answers Zoom's endpoint.url_validation, which Verify has
// passed: the plainToken and its HMAC-SHA256 under the secret token that
// signed the request (so it works while a secret is rotated). Any other
// body is a payload.
func zoomValidation(v *Verifier, r *http.Request, body []byte) (*Answer, error) {
	var doc struct {
		Event   string          `json:"event"`
		Payload json.RawMessage `json:"payload"`
	}
	if json.Unmarshal(body, &doc) != nil || doc.Event != "endpoint.url_validation" {
		return nil, nil
	}
	var payload struct {
		PlainToken json.RawMessage `json:"plainToken"`
	}
	var token string
	if json.Unmarshal(doc.Payload, &payload) != nil || json.Unmarshal(payload.PlainToken, &token) != nil || token == "" {
		return nil, refusef(http.StatusBadRequest, "the endpoint.url_validation has no payload.plainToken string to answer")
	}
	key := v.zoomKey(r, body)
	if key == nil {
		// Verify passed on this request, so a key matches; never answer
		// one that was not signed.
		return nil, errNoMatch("x-zm-signature")
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(token))
	answer, err := json.Marshal(struct {
		PlainToken     string `json:"plainToken"`
		EncryptedToken string `json:"encryptedToken"`
	}{token, hex.EncodeToString(m.Sum(nil))})
	if err != nil {
		return nil, err
	}
	return &Answer{Status: http.StatusOK, ContentType: "application/json", Body: answer}, nil
}

// zoomKey is the secret that signed r and body, or nil.
func (v *Verifier) zoomKey(r *http.Request, body []byte) []byte {
	s, _, err := zoomV0.read(r.Header)
	if err != nil {
		return nil
	}
	for _, key := range v.keys {
		m := hmac.New(sha256.New, key)
		for _, p := range append(s.before, body) {
			m.Write(p)
		}
		if hmac.Equal(m.Sum(nil), s.sigs[0]) {
			return key
		}
	}
	return nil
}
