package verify

import (
	"crypto/sha256"
	"fmt"
	"net/url"
)

// setOptions resolves and checks the block options that belong to one
// scheme: verify_token (meta) and base_url (twilio). An option given for
// another scheme is an error, so a misplaced one is never silently ignored.
func (v *Verifier) setOptions(cfg Config, resolve func(string) (string, error)) error {
	name := v.scheme.name
	if cfg.VerifyToken != "" {
		if name != "meta" {
			return fmt.Errorf("verify %s: verify_token is for verify meta only", name)
		}
		token, err := resolve(cfg.VerifyToken)
		if err != nil || token == "" {
			return fmt.Errorf("verify meta: verify_token resolves to empty or has an empty placeholder; set it")
		}
		sum := sha256.Sum256([]byte(token))
		v.verifyToken = &sum
	}
	if cfg.BaseURL != "" {
		if name != "twilio" {
			return fmt.Errorf("verify %s: base_url is for verify twilio only", name)
		}
		raw, err := resolve(cfg.BaseURL)
		if err != nil || raw == "" {
			return fmt.Errorf("verify twilio: base_url resolves to empty or has an empty placeholder; set it")
		}
		if v.baseURL, err = parseBaseURL(raw); err != nil {
			return fmt.Errorf("verify twilio: base_url %q: %v", raw, err)
		}
	}
	// A GET handshake is answered only when the scheme has one and, for
	// Meta, a verify_token to check it against: without one GET stays 405.
	v.answersGET = v.scheme.get != nil && (name != "meta" || v.verifyToken != nil)
	return nil
}

// parseBaseURL checks a base_url: scheme and host (with a port where the
// sender was given one), nothing else.
func parseBaseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("want an absolute http:// or https:// URL")
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("no host in it")
	case u.User != nil:
		return nil, fmt.Errorf("want no user information")
	case u.Path != "" && u.Path != "/", u.RawPath != "":
		return nil, fmt.Errorf("want no path: only scheme://host[:port]; the path and query are the request's own")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("want no query or fragment: only scheme://host[:port]")
	}
	if p := u.Port(); p != "" {
		var n int
		if _, err := fmt.Sscanf(p, "%d", &n); err != nil || n < 1 || n > 65535 || fmt.Sprint(n) != p {
			return nil, fmt.Errorf("the port is not a number from 1 to 65535")
		}
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}
