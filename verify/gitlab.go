package verify

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"time"
)

// gitlab: X-Gitlab-Token carries the webhook's secret token itself, not a
// signature: it is compared in constant time (SHA-256 of both, so neither
// length shows), entirely from the headers, and it is never stored,
// forwarded or shown (Headers leaves it out; SecretHeaders names it).
var gitlabScheme = &scheme{
	name:       "gitlab",
	defaultKey: []string{"body"}, // the UUID headers are not covered by the token
	headers:    []string{"X-Gitlab-Event", "X-Gitlab-Event-UUID", "X-Gitlab-Webhook-UUID", "X-Gitlab-Instance"},
	key: func(secret string) ([]byte, error) {
		sum := sha256.Sum256([]byte(secret))
		return sum[:], nil
	},
	parse: parseGitlab,
	check: func(*Verifier, signed, *http.Request, []byte) error { return nil }, // parse checked the token
}

const gitlabTokenHeader = "X-Gitlab-Token"

func parseGitlab(v *Verifier, h http.Header, _ time.Time) (signed, error) {
	token, err := header(h, gitlabTokenHeader)
	if err != nil {
		return signed{}, err
	}
	got := sha256.Sum256([]byte(token))
	match := 0
	for _, key := range v.keys {
		match |= subtle.ConstantTimeCompare(got[:], key)
	}
	if match != 1 {
		return signed{}, failf("%s does not match the configured token(s): a wrong or rotated token", gitlabTokenHeader)
	}
	return signed{header: gitlabTokenHeader}, nil
}

// SecretHeaders are the incoming headers that carry the scheme's secret
// itself (GitLab's X-Gitlab-Token): the relay must never store, forward,
// key on or show them.
func (v *Verifier) SecretHeaders() []string {
	if v.scheme == gitlabScheme {
		return []string{gitlabTokenHeader}
	}
	return nil
}
