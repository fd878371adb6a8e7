package verify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"time"
)

// twitter: X's Account Activity webhooks, x-twitter-webhooks-signature
// "sha256=<base64>", the HMAC-SHA256 of the body under the app's consumer
// secret. X checks the URL with a GET carrying crc_token (the CRC),
// answered here.
//
// The CRC answer is the same HMAC as an event's signature, so it must
// never sign something that could be a body: a crc_token is a short
// token in the base64 alphabets (X sends the base64 of a UUID), and a
// body is a JSON object (X's events are), which begins with "{" (after
// JSON whitespace) where no token can. The two sets share nothing.
var twitterScheme = &scheme{
	name:       "twitter",
	defaultKey: []string{"body"}, // X sends no signed delivery id; a retry repeats the body
	headers:    []string{"X-Twitter-Webhooks-Signature"},
	key:        rawKey,
	parse:      parseBodyMAC("X-Twitter-Webhooks-Signature", "sha256=", base64.StdEncoding.DecodeString, "sha256=<base64>"),
	after:      func(_ *Verifier, body []byte, _ time.Time) error { return twitterBody(body) },
	get:        twitterCRC,
}

// maxCRCToken is the longest crc_token answered. X's are 48 characters
// (the base64 of a UUID).
const maxCRCToken = 64

// twitterBody refuses a body that is not a JSON object: X sends none, and
// refusing them keeps the bodies apart from the tokens the CRC signs.
func twitterBody(body []byte) error {
	i := 0
	for i < len(body) && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n') {
		i++
	}
	if i == len(body) || body[i] != '{' || !json.Valid(body) {
		return refusef(http.StatusBadRequest, "the body is not a JSON object: X sends its events as JSON objects, and no other body is accepted, so that no answer to a CRC can sign one")
	}
	return nil
}

// crcToken reports whether c is a token the CRC answers: 1 to 64 bytes of
// the base64 alphabets (standard and URL-safe), with no "{", "[", quote or
// whitespace that could begin a JSON body.
func crcToken(c string) bool {
	if len(c) == 0 || len(c) > maxCRCToken {
		return false
	}
	for i := 0; i < len(c); i++ {
		b := c[i]
		if !('A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '+' || b == '/' || b == '=' || b == '-' || b == '_') {
			return false
		}
	}
	return true
}

// twitterCRC answers X's challenge-response check:
// {"response_token":"sha256=" + base64(HMAC-SHA256(consumer secret, c))},
// with the first (current) secret.
func twitterCRC(v *Verifier, r *http.Request) (*Answer, error) {
	tokens, ok := r.URL.Query()["crc_token"]
	switch {
	case !ok:
		return nil, refusef(http.StatusBadRequest, "not X's challenge-response check: crc_token missing from the query")
	case len(tokens) != 1:
		return nil, refusef(http.StatusBadRequest, "crc_token given %d times, want once", len(tokens))
	case !crcToken(tokens[0]):
		return nil, refusef(http.StatusBadRequest, "crc_token is not a token X sends (1 to %d characters of base64): refused, as its answer would be a signature", maxCRCToken)
	}
	m := hmac.New(sha256.New, v.keys[0])
	m.Write([]byte(tokens[0]))
	answer, err := json.Marshal(struct {
		ResponseToken string `json:"response_token"`
	}{"sha256=" + base64.StdEncoding.EncodeToString(m.Sum(nil))})
	if err != nil {
		return nil, err
	}
	return &Answer{Status: http.StatusOK, ContentType: "application/json", Body: answer}, nil
}
