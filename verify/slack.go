package verify

import (
	"encoding/json"
	"net/http"
)

// slackHandshake answers Slack's url_verification, which Slack signs like
// any event: {"type":"url_verification","challenge":"..."} is answered 200
// {"challenge":"..."}, the challenge encoded anew, never echoed as sent.
// Any other body is a payload, forms (interactivity, slash commands)
// included.
func slackHandshake(_ *Verifier, _ *http.Request, body []byte) (*Answer, error) {
	var doc struct {
		Type      json.RawMessage `json:"type"`
		Challenge json.RawMessage `json:"challenge"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return nil, nil
	}
	var typ string
	if json.Unmarshal(doc.Type, &typ) != nil || typ != "url_verification" {
		return nil, nil
	}
	var challenge string
	// a JSON string: null would decode as "" without an error
	if len(doc.Challenge) == 0 || doc.Challenge[0] != '"' || json.Unmarshal(doc.Challenge, &challenge) != nil {
		return nil, refusef(http.StatusBadRequest, `a url_verification without a string challenge: want {"type":"url_verification","challenge":"..."}`)
	}
	out, _ := json.Marshal(struct { // a string always encodes
		Challenge string `json:"challenge"`
	}{challenge})
	return &Answer{Status: http.StatusOK, ContentType: "application/json", Body: append(out, '\n'), NoSniff: true}, nil
}
