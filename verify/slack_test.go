package verify

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func slackVerifier(t *testing.T) *Verifier {
	t.Helper()
	v, err := New(Config{Scheme: "slack", Secrets: []string{"slack-secret"}}, func(s string) (string, error) { return s, nil })
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSlackHandshake: a url_verification is answered with its challenge,
// encoded anew; a wrong one is a 400; anything else is a payload.
func TestSlackHandshake(t *testing.T) {
	v := slackVerifier(t)
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	if v.AnswersGET() {
		t.Error("Slack answers a GET handshake, want none")
	}

	for _, challenge := range []string{"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", `</script><b>"x"\`, ""} {
		body, _ := json.Marshal(map[string]string{"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge, "type": "url_verification"})
		a, err := v.Handshake(r, body)
		if err != nil || a == nil {
			t.Fatalf("challenge %q: answer %v, err %v; want an answer", challenge, a, err)
		}
		var got map[string]any
		if err := json.Unmarshal(a.Body, &got); err != nil {
			t.Fatalf("challenge %q: the answer %q is not JSON: %v", challenge, a.Body, err)
		}
		if a.Status != http.StatusOK || a.ContentType != "application/json" || !a.NoSniff ||
			len(got) != 1 || got["challenge"] != challenge {
			t.Errorf("challenge %q: answered %d %s nosniff=%v %q, want 200 application/json nosniff {\"challenge\":...}",
				challenge, a.Status, a.ContentType, a.NoSniff, a.Body)
		}
		if strings.ContainsAny(string(a.Body), "<>") {
			t.Errorf("challenge %q: the answer %q carries < or > as sent", challenge, a.Body)
		}
	}

	for _, body := range []string{
		`{"type":"url_verification"}`,
		`{"type":"url_verification","challenge":null}`,
		`{"type":"url_verification","challenge":42}`,
		`{"type":"url_verification","challenge":{"a":"b"}}`,
		`{"type":"url_verification","challenge":["x"]}`,
	} {
		a, err := v.Handshake(r, []byte(body))
		var ve *Error
		if a != nil || !errors.As(err, &ve) || ve.Status() != http.StatusBadRequest {
			t.Errorf("%s: answer %v, err %v; want a 400", body, a, err)
		}
	}

	for _, body := range []string{
		`{"type":"event_callback","event_id":"Ev1","challenge":"not a handshake","event":{"type":"app_mention"}}`,
		`{"type":["url_verification"],"challenge":"c"}`,
		`{"challenge":"c"}`,
		`payload=%7B%22type%22%3A%22url_verification%22%7D`,
		`["url_verification"]`,
		``,
	} {
		if a, err := v.Handshake(r, []byte(body)); a != nil || err != nil {
			t.Errorf("%s: answer %v, err %v; want a payload (nil, nil)", body, a, err)
		}
	}
}
