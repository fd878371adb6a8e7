package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestAssetsEmbedded(t *testing.T) {
	for name, ct := range map[string]string{"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css"} {
		a, ok := consoleAssets[name]
		if !ok || len(a.body) == 0 || !strings.HasPrefix(a.contentType, ct) || a.etag == "" {
			t.Errorf("%s: embedded %v, %d bytes, type %q, etag %q", name, ok, len(a.body), a.contentType, a.etag)
		}
	}
}

// TestAPIErrors: the console answers the operations' errors as the admin
// API does, with a JSON body.
func TestAPIErrors(t *testing.T) {
	c := &Console{AllowAnonymous: true, logger: zap.NewNop(), origin: http.NewCrossOriginProtection()}
	for _, tc := range []struct {
		method, target string
		status         int
		has            string
	}{
		{"GET", "/api/dead?relay=nope", 404, `no relay named \"nope\" is running`},
		{"GET", "/api/letter?relay=nope&id=1", 404, `no relay named \"nope\"`},
		{"GET", "/api/other", 404, "the console has no api/other"},
		{"POST", "/api/dead", 405, "api/dead takes GET"},
		{"GET", "/api/relays", 200, `"relays":[]`},
	} {
		w := httptest.NewRecorder()
		if err := c.ServeHTTP(w, httptest.NewRequest(tc.method, tc.target, nil), nil); err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.target, err)
		}
		if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.has) || w.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: %d %s, want %d with %s", tc.method, tc.target, w.Code, w.Body, tc.status, tc.has)
		}
	}
}

// TestAnonymousRefused: without a user set by an authentication handler
// and without AllowAnonymous, the page and the JSON are refused with 403.
func TestAnonymousRefused(t *testing.T) {
	c := &Console{logger: zap.NewNop(), origin: http.NewCrossOriginProtection()}
	for target, ct := range map[string]string{"/": "text/html", "/api/relays": "application/json"} {
		w := httptest.NewRecorder()
		if err := c.ServeHTTP(w, httptest.NewRequest("GET", target, nil), nil); err != nil {
			t.Fatal(err)
		}
		if w.Code != 403 || !strings.HasPrefix(w.Header().Get("Content-Type"), ct) || !strings.Contains(w.Body.String(), "basic_auth") {
			t.Errorf("GET %s: %d %q %.100s, want 403 %s saying basic_auth", target, w.Code, w.Header().Get("Content-Type"), w.Body, ct)
		}
	}
}
