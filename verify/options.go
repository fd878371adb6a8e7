package verify

import (
	"crypto/sha256"
	"fmt"
	"net/url"
)

// checkOptionOwners refuses a block option given for a scheme it does not
// belong to, so a misplaced one is never silently ignored.
func checkOptionOwners(cfg Config) error {
	for _, o := range []struct{ name, value, owner string }{
		{"verify_token", cfg.VerifyToken, "meta"},
		{"base_url", cfg.BaseURL, "twilio"},
		{"jwks", cfg.JWKS, "fal"},
	} {
		if o.value != "" && cfg.Scheme != o.owner {
			return fmt.Errorf("verify %s: %s is for verify %s only", cfg.Scheme, o.name, o.owner)
		}
	}
	return nil
}

// setupMeta reads Meta's verify_token. Without one, Meta's subscription
// GET has nothing to be checked against, and GET stays 405.
func setupMeta(v *Verifier, cfg Config, resolve func(string) (string, error)) error {
	v.answersGET = false
	if cfg.VerifyToken == "" {
		return nil
	}
	token, err := resolve(cfg.VerifyToken)
	if err != nil || token == "" {
		return fmt.Errorf("verify meta: verify_token resolves to empty or has an empty placeholder; set it")
	}
	sum := sha256.Sum256([]byte(token))
	v.verifyToken, v.answersGET = &sum, true
	return nil
}

// setupTwilio reads base_url, when Twilio calls another proxy in front.
func setupTwilio(v *Verifier, cfg Config, resolve func(string) (string, error)) error {
	if cfg.BaseURL == "" {
		return nil
	}
	raw, err := resolve(cfg.BaseURL)
	if err != nil || raw == "" {
		return fmt.Errorf("verify twilio: base_url resolves to empty or has an empty placeholder; set it")
	}
	if v.baseURL, err = parseBaseURL(raw); err != nil {
		return fmt.Errorf("verify twilio: base_url %q: %v", raw, err)
	}
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
