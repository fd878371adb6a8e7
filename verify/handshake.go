package verify

import (
	"net/http"
)

// Answer is the relay's own answer to a sender's URL handshake: a request
// that checks the URL before (or while) the sender sends to it, and is
// never stored, deduped or forwarded.
type Answer struct {
	Status      int
	ContentType string // "" with no body (Discord's 204)
	Body        []byte
	// NoSniff adds X-Content-Type-Options: nosniff, for an answer that
	// echoes what the request carried.
	NoSniff bool
}

// AnswersGET reports whether the verifier answers a handshake made with GET
// (Meta's hub.challenge, X's crc_token), so the relay lets GET through to
// HandshakeGET instead of answering 405. It is the verifier's, not only the
// scheme's: verify meta answers only with a verify_token configured.
func (v *Verifier) AnswersGET() bool { return v.answersGET }

// HandshakeGET answers a GET handshake, after the relay's own auth and
// before any body is read. A request that is not the handshake, or a wrong
// one, is an *Error with its status (400 malformed, 403 a wrong verify
// token).
func (v *Verifier) HandshakeGET(r *http.Request) (*Answer, error) {
	if !v.answersGET {
		return nil, refusef(http.StatusMethodNotAllowed, "verify %s answers no GET handshake", v.scheme.name)
	}
	return v.scheme.get(v, r)
}

// Handshake answers a signed POST that is the sender's handshake (Slack's
// url_verification, Zoom's endpoint.url_validation, Discord's PING). It is
// called after Verify passed on r and body; nil, nil for a payload, which
// the relay goes on to store.
func (v *Verifier) Handshake(r *http.Request, body []byte) (*Answer, error) {
	if v.scheme.handshake == nil {
		return nil, nil
	}
	return v.scheme.handshake(v, r, body)
}
