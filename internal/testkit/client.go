package testkit

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Client is the HTTP client of Send and Post. No keep-alive: a config
// reload closes idle connections, and every request should say something
// about the relay, not about a connection the old server just closed.
var Client = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// Reply is the response to one request a test made, read whole.
type Reply struct {
	Status int
	Header http.Header
	Body   string
}

// Send makes one request with Client and reads the whole reply. header
// holds "Name: value" pairs; a request with a body and no Content-Type is
// sent as application/json.
func Send(method, url string, body io.Reader, header ...string) (Reply, error) {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return Reply{}, err
	}
	for _, h := range header {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	if req.Header.Get("Content-Type") == "" && body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := Client.Do(req)
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Reply{}, err
	}
	return Reply{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}, nil
}

// Post sends body to url and fails the test if no reply comes.
func Post(t testing.TB, url string, body []byte, header ...string) Reply {
	t.Helper()
	r, err := Send(http.MethodPost, url, bytes.NewReader(body), header...)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return r
}

// MustAccept posts body and fails the test unless the relay accepts it.
func MustAccept(t testing.TB, url string, body []byte, header ...string) {
	t.Helper()
	ExpectStatus(t, Post(t, url, body, header...), http.StatusOK, "accepted")
}

// ExpectStatus checks the reply's status and, when jsonStatus is set, that
// the body is the relay's JSON {"status":jsonStatus} with Content-Type
// application/json.
func ExpectStatus(t testing.TB, r Reply, status int, jsonStatus string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d (body %q)", r.Status, status, r.Body)
	}
	if jsonStatus == "" {
		return
	}
	if want := fmt.Sprintf(`{"status":%q}`, jsonStatus); strings.TrimSpace(r.Body) != want {
		t.Fatalf("body %q, want %s", r.Body, want)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
}
