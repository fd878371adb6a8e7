package webhookrelay

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/hookrelay/caddy-webhook-relay/verify"
)

// Handshakes: requests a sender makes to check the URL before (or while)
// it sends to it, which the relay answers itself after its own auth. A
// handshake is never stored, deduped or forwarded; it is counted as
// OutcomeChallenge.

// The kinds of `challenge`: the handshakes of senders that do not sign
// them, so no verify scheme answers them.
const (
	// ChallengeGraph answers Microsoft Graph's (and SharePoint's, and
	// OneDrive's) subscription validation: a POST with the query
	// parameter validationToken, answered 200 with the token, decoded,
	// as text/plain.
	ChallengeGraph = "graph"
	// ChallengeDropbox answers Dropbox's verification request: a GET with
	// the query parameter challenge, answered 200 with it as text/plain.
	ChallengeDropbox = "dropbox"
)

var challengeKinds = []string{ChallengeGraph, ChallengeDropbox}

// maxChallengeToken bounds the token a challenge echoes, in bytes once
// decoded. Graph's is about 120 bytes ("Validation: Testing client
// application reachability for subscription Request-Id: <uuid>"),
// Dropbox's a short random string; an echo is no place for more.
const maxChallengeToken = 1024

// checkChallenge rejects a `challenge` kind the relay does not know.
func checkChallenge(kind string) error {
	if kind != "" && !slices.Contains(challengeKinds, kind) {
		return fmt.Errorf("challenge %q: unknown kind; use one of %s", kind, strings.Join(challengeKinds, ", "))
	}
	return nil
}

// handshaker is what the ack path needs of a verify scheme to answer its
// handshakes (a *verify.Verifier).
type handshaker interface {
	Scheme() string
	AnswersGET() bool
	HandshakeGET(r *http.Request) (*verify.Answer, error)
	Handshake(r *http.Request, body []byte) (*verify.Answer, error)
}

// answersGET reports whether a handshake of this relay comes as a GET, so
// that GET is let through rather than answered 405.
func (h *Handler) answersGET() bool {
	return h.Challenge == ChallengeDropbox || (h.handshaker != nil && h.handshaker.AnswersGET())
}

// allowedMethods is the Allow header of a 405.
func (h *Handler) allowedMethods() string {
	if h.answersGET() {
		return "GET, POST"
	}
	return http.MethodPost
}

func (h *Handler) methodNotAllowed(w http.ResponseWriter, method string) (outcome, key string, _ error) {
	w.Header().Set("Allow", h.allowedMethods())
	err := fmt.Errorf("webhooks are delivered with POST, not %s", method)
	if h.answersGET() {
		err = fmt.Errorf("webhooks are delivered with POST (and this relay's URL handshake with GET), not %s", method)
	}
	return OutcomeMethodNotAllowed, "", refuse(http.StatusMethodNotAllowed, "", err)
}

// handshakeGET answers a GET, which is a handshake or nothing: Dropbox's
// challenge, else the verify scheme's. rawQuery is the query without the
// auth parameters, which have been checked. No body is read.
func (h *Handler) handshakeGET(w http.ResponseWriter, r *http.Request, rawQuery string) (outcome, key string, _ error) {
	if h.Challenge == ChallengeDropbox {
		c, err := queryToken(rawQuery, "challenge")
		if err != nil {
			return OutcomeBadRequest, "", refuse(http.StatusBadRequest, "", err)
		}
		if c != nil {
			return h.answer(w, r, plainAnswer(*c), false)
		}
	}
	if h.handshaker != nil && h.handshaker.AnswersGET() {
		a, err := h.handshaker.HandshakeGET(r)
		if err != nil {
			return h.refusedBy(w, h.handshaker.Scheme(), err)
		}
		if a != nil {
			return h.answer(w, r, a, false)
		}
	}
	what := "a GET to this relay is the sender's URL handshake, and this is none"
	if h.Challenge == ChallengeDropbox {
		what = "a GET to this relay is Dropbox's verification request, which carries the query parameter challenge"
	}
	return OutcomeBadRequest, "", refuse(http.StatusBadRequest, "", errors.New(what+"; webhooks are delivered with POST"))
}

// graphValidation reads Graph's validationToken out of rawQuery (the query
// without the auth parameters): nil when the request has none, and is a
// notification. The name is matched in any case: SharePoint's webhooks
// send validationtoken.
func graphValidation(rawQuery string) (*string, error) {
	return queryToken(rawQuery, "validationToken")
}

// queryToken returns the decoded value of the query parameter name (in any
// case), nil when there is none. Given more than once, empty or longer than
// maxChallengeToken, it is an error: no sender asks that.
func queryToken(rawQuery, name string) (*string, error) {
	// a malformed part of the query is skipped: the token is read where
	// it can be, and a notification is not refused for it
	q, _ := url.ParseQuery(rawQuery)
	var values []string
	for k, vs := range q {
		if strings.EqualFold(k, name) {
			values = append(values, vs...)
		}
	}
	switch {
	case len(values) == 0:
		return nil, nil
	case len(values) > 1:
		return nil, fmt.Errorf("the query parameter %s is given %d times; a handshake carries it once", name, len(values))
	case values[0] == "":
		return nil, fmt.Errorf("the query parameter %s is empty; a handshake carries the token to answer with", name)
	case len(values[0]) > maxChallengeToken:
		return nil, fmt.Errorf("the query parameter %s is %d bytes long; the relay echoes at most %d", name, len(values[0]), maxChallengeToken)
	}
	return &values[0], nil
}

// plainAnswer echoes a challenge token as text. The charset is given so
// that no client guesses one (UTF-7), and nosniff so that none takes the
// echo for HTML.
func plainAnswer(token string) *verify.Answer {
	return &verify.Answer{Status: http.StatusOK, ContentType: "text/plain; charset=utf-8", Body: []byte(token), NoSniff: true}
}

// answer writes a handshake's answer as it is. bodyRead says whether the
// request's body was read: an answer given before it was goes out at once
// (closeUnread), as a refusal would.
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, a *verify.Answer, bodyRead bool) (outcome, key string, _ error) {
	if !bodyRead {
		closeUnread(w, r)
	}
	hdr := w.Header()
	// fresh slices: later handlers (header) may edit values in place
	if a.ContentType != "" {
		hdr["Content-Type"] = []string{a.ContentType}
	}
	if a.NoSniff {
		hdr["X-Content-Type-Options"] = []string{"nosniff"}
	}
	w.WriteHeader(a.Status)
	if len(a.Body) > 0 {
		_, _ = w.Write(a.Body)
	}
	return OutcomeChallenge, "", nil
}
