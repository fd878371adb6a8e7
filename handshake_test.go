package webhookrelay

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/hookrelay/caddy-webhook-relay/verify"
)

func TestQueryToken(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  string // "" for none
		err   string // a phrase of the error
	}{
		{"validationToken=abc", "abc", ""},
		{"a=1&validationToken=Validation%3a+Testing+client&b=2", "Validation: Testing client", ""},
		{"VALIDATIONTOKEN=x", "x", ""},
		{"validation%54oken=encoded-name", "encoded-name", ""},
		{"bad=%zz&validationToken=still-read", "still-read", ""},
		{"", "", ""},
		{"a=1&validationTokens=x&token=validationToken", "", ""},
		{"validationToken=", "", "empty"},
		{"validationToken", "", "empty"},
		{"validationToken=a&validationtoken=b", "", "given 2 times"},
		{"validationToken=" + strings.Repeat("%41", maxChallengeToken), strings.Repeat("A", maxChallengeToken), ""},
		{"validationToken=" + strings.Repeat("A", maxChallengeToken+1), "", "at most 1024"},
	} {
		got, err := queryToken(tc.query, "validationToken")
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%.60s: error %v, want one saying %q", tc.query, err, tc.err)
			}
		case err != nil:
			t.Errorf("%.60s: %v", tc.query, err)
		case tc.want == "" && got != nil:
			t.Errorf("%.60s: token %q, want none", tc.query, *got)
		case tc.want != "" && (got == nil || *got != tc.want):
			t.Errorf("%.60s: token %v, want %q", tc.query, got, tc.want)
		}
	}
}

// fakeHandshaker stands for a verify scheme with a GET handshake (Meta's,
// X's), which the verify package's own schemes bring: ?hub.challenge=<c>
// is answered <c>; a POST whose body is "ping" is its POST handshake.
type fakeHandshaker struct{ gets, posts int }

func (f *fakeHandshaker) Scheme() string   { return "fake" }
func (f *fakeHandshaker) AnswersGET() bool { return true }

func (f *fakeHandshaker) HandshakeGET(r *http.Request) (*verify.Answer, error) {
	f.gets++
	c := r.URL.Query().Get("hub.challenge")
	return &verify.Answer{Status: http.StatusOK, ContentType: "text/plain", Body: []byte(c)}, nil
}

func (f *fakeHandshaker) Handshake(_ *http.Request, body []byte) (*verify.Answer, error) {
	f.posts++
	if string(body) == "ping" {
		return &verify.Answer{Status: http.StatusNoContent}, nil
	}
	return nil, nil
}

func serveMethod(h *Handler, method, target string, body []byte) (*httptest.ResponseRecorder, *caddy.Replacer) {
	r := httptest.NewRequest(method, target, bytes.NewReader(body))
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, r, nil) // which writes the error answers too
	return w, repl
}

// TestHandshakeThroughTheScheme: a scheme's GET handshake is let through
// after the relay's auth, a POST handshake after the signature check, and
// neither is stored or deduped; both count as challenge.
func TestHandshakeThroughTheScheme(t *testing.T) {
	fake := &fakeHandshaker{}
	h := provisioned(t, "handshake-fake", func(h *Handler) { h.Key = []string{"body"} })
	h.handshaker = fake

	w, repl := serveMethod(h, http.MethodGet, "/?token=s3cret&hub.challenge=c-123", nil)
	if w.Code != http.StatusOK || w.Body.String() != "c-123" || w.Header().Get("Content-Type") != "text/plain" {
		t.Errorf("GET handshake: %d %q %q, want 200 c-123 text/plain", w.Code, w.Header().Get("Content-Type"), w.Body)
	}
	if o, _ := repl.GetString("http.webhook_relay.outcome"); o != OutcomeChallenge {
		t.Errorf("GET handshake: outcome %q, want %q", o, OutcomeChallenge)
	}

	// auth runs first: the scheme never sees a stranger's GET
	w, repl = serveMethod(h, http.MethodGet, "/?hub.challenge=c-123", nil)
	if w.Code != http.StatusUnauthorized || fake.gets != 1 || strings.Contains(w.Body.String(), "c-123") {
		t.Errorf("GET without the token: %d %q, the scheme asked %d times; want 401 and once", w.Code, w.Body, fake.gets)
	}
	if o, _ := repl.GetString("http.webhook_relay.outcome"); o != OutcomeUnauthorized {
		t.Errorf("GET without the token: outcome %q", o)
	}

	w, _ = serveMethod(h, http.MethodPut, "/?token=s3cret", nil)
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, POST" {
		t.Errorf("PUT: %d Allow %q, want 405 Allow GET, POST", w.Code, w.Header().Get("Allow"))
	}

	// a POST handshake is answered, and neither stored nor marked seen
	for range 2 {
		w, repl = serveMethod(h, http.MethodPost, "/?token=s3cret", []byte("ping"))
		if w.Code != http.StatusNoContent || w.Body.Len() != 0 {
			t.Errorf("POST handshake: %d %q, want 204 without a body", w.Code, w.Body)
		}
		if o, _ := repl.GetString("http.webhook_relay.outcome"); o != OutcomeChallenge {
			t.Errorf("POST handshake: outcome %q", o)
		}
	}
	if st, err := h.relay.store.Stats(context.Background()); err != nil || st.Keys != 0 || st.Backlog != 0 {
		t.Errorf("after two handshakes the store holds %+v (%v), want nothing", st, err)
	}
	// a payload goes on to be stored
	if w, _ = serveMethod(h, http.MethodPost, "/?token=s3cret", []byte(`{"a":1}`)); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "accepted") {
		t.Errorf("payload: %d %q, want accepted", w.Code, w.Body)
	}
	if fake.posts != 3 {
		t.Errorf("the scheme was asked about %d POSTs, want 3", fake.posts)
	}
}

func TestChallengeCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		block string
		want  string // the Challenge parsed, or
		err   string // a phrase of the error
	}{
		{"challenge graph", "graph", ""},
		{"challenge dropbox", "dropbox", ""},
		{"challenge", "", "wrong argument count"},
		{"challenge graph dropbox", "", "wrong argument count"},
		{"challenge zoom", "", "use one of graph, dropbox"},
		{"challenge graph\n\tchallenge graph", "", "given twice"},
	} {
		d := caddyfile.NewTestDispenser("webhook_relay http://127.0.0.1:3000/hook {\n\t" + tc.block + "\n}")
		h := new(Handler)
		err := h.UnmarshalCaddyfile(d)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one saying %q", tc.block, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.block, err)
		case h.Challenge != tc.want:
			t.Errorf("%q: challenge %q, want %q", tc.block, h.Challenge, tc.want)
		}
	}
}

// TestChallengeUnknownKind: the JSON config is checked at provisioning
// too, naming the kinds.
func TestChallengeUnknownKind(t *testing.T) {
	h := &Handler{Upstream: "http://127.0.0.1:9/hook", Challenge: "Graph"}
	h.applyDefaults()
	err := h.checkSettings()
	if err == nil || !strings.Contains(err.Error(), `challenge "Graph"`) || !strings.Contains(err.Error(), "graph, dropbox") {
		t.Errorf("challenge Graph: %v, want an error naming it and the kinds", err)
	}
}

// TestGraphValidationIsUnsigned: Graph signs no validation, so with verify
// too it is answered before the signature headers are looked at; its
// notifications are still checked.
func TestGraphValidationIsUnsigned(t *testing.T) {
	h := provisioned(t, "handshake-graph-verify", func(h *Handler) {
		h.Challenge = ChallengeGraph
		h.Verify = &verify.Config{Scheme: "hmac", Header: "X-Signature", Secrets: []string{"sig-s3cret"}}
	})
	w, repl := serveMethod(h, http.MethodPost, "/?validationToken=v%2B1&token=s3cret", nil)
	if w.Code != http.StatusOK || w.Body.String() != "v+1" || w.Header().Get("Content-Type") != "text/plain; charset=utf-8" ||
		w.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("validation: %d %q %v, want 200 v+1 as text, nosniff", w.Code, w.Body, w.Header())
	}
	if o, _ := repl.GetString("http.webhook_relay.outcome"); o != OutcomeChallenge {
		t.Errorf("validation: outcome %q", o)
	}
	if w, _ = serveMethod(h, http.MethodPost, "/?token=s3cret", []byte(`{"value":[]}`)); w.Code != http.StatusUnauthorized {
		t.Errorf("an unsigned notification: %d %q, want 401", w.Code, w.Body)
	}
}
