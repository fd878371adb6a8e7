package webhookrelay

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/net/http/httpguts"
)

// authHeader is one auth_header field with the SHA-256 digests of the
// values it may carry.
type authHeader struct {
	field   string // canonical
	digests [][sha256.Size]byte
}

// basicUser is one auth_basic user with the SHA-256 digests of the name
// and of its passwords.
type basicUser struct {
	user      [sha256.Size]byte
	passwords [][sha256.Size]byte
}

// basicChallenge is the of the WWW-Authenticate challenge of a 401 for
// missing or wrong Basic credentials.
const basicChallenge = `Basic realm="webhook_relay"`

// resolveSecret resolves the placeholders of a configured secret; any
// placeholder resolving to empty is an error ("whk_{env.UNSET}" would be
// guessable). The error names the placeholders, never a literal value.
func resolveSecret(repl *caddy.Replacer, raw, what string) (string, error) {
	secret, err := repl.ReplaceOrErr(raw, true, true)
	if err != nil || secret == "" {
		if names := placeholderNames(raw); names != "" {
			what += " (placeholders " + names + ")"
		}
		return "", fmt.Errorf("%s resolves to empty or has an empty placeholder; set it (an empty secret would let anyone in)", what)
	}
	return secret, nil
}

// compileAuthHeaders checks and resolves auth_header, sorted by field so
// that the check, and which failure a request is told, do not vary.
func compileAuthHeaders(repl *caddy.Replacer, cfg map[string][]string) ([]authHeader, error) {
	out := make([]authHeader, 0, len(cfg))
	seen := make(map[string]bool, len(cfg))
	for field, values := range cfg {
		if !httpguts.ValidHeaderFieldName(field) {
			return nil, fmt.Errorf("auth_header %q: not a valid header name", field)
		}
		canon := http.CanonicalHeaderKey(field)
		if seen[canon] {
			return nil, fmt.Errorf("auth_header %s given twice (in another case); list all its values once", field)
		}
		seen[canon] = true
		if setByRelay[canon] || hopByHop(canon) {
			return nil, fmt.Errorf("auth_header %s: a header the relay or the connection uses; pick another header", field)
		}
		if len(values) == 0 {
			return nil, fmt.Errorf("auth_header %s: no value given", field)
		}
		a := authHeader{field: canon}
		for i, raw := range values {
			v, err := resolveSecret(repl, raw, fmt.Sprintf("auth_header %s: value #%d", field, i+1))
			if err != nil {
				return nil, err
			}
			if !httpguts.ValidHeaderFieldValue(v) || strings.TrimSpace(v) != v {
				return nil, fmt.Errorf("auth_header %s: value #%d (placeholders resolved) holds a character or surrounding space a header value cannot carry, so no request could match it; check the secret it reads", field, i+1)
			}
			a.digests = append(a.digests, sha256.Sum256([]byte(v)))
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b authHeader) int { return strings.Compare(a.field, b.field) })
	return out, nil
}

// compileAuthBasic checks and resolves auth_basic.
func compileAuthBasic(repl *caddy.Replacer, cfg map[string][]string) ([]basicUser, error) {
	out := make([]basicUser, 0, len(cfg))
	for rawUser, passwords := range cfg {
		if rawUser == "" {
			return nil, fmt.Errorf("auth_basic: empty user name")
		}
		user, err := resolveSecret(repl, rawUser, "auth_basic: user "+placeholderNames(rawUser))
		if err != nil {
			return nil, err
		}
		if strings.Contains(user, ":") {
			return nil, fmt.Errorf("auth_basic %s: a user name may not contain ':' (Basic credentials are user:password)", rawUser)
		}
		if len(passwords) == 0 {
			return nil, fmt.Errorf("auth_basic %s: no password given", rawUser)
		}
		u := basicUser{user: sha256.Sum256([]byte(user))}
		for i, raw := range passwords {
			p, err := resolveSecret(repl, raw, fmt.Sprintf("auth_basic %s: password #%d", rawUser, i+1))
			if err != nil {
				return nil, err
			}
			u.passwords = append(u.passwords, sha256.Sum256([]byte(p)))
		}
		out = append(out, u)
	}
	return out, nil
}

// checkAuthHeaders fails, naming the field, unless every auth_header field
// is present once and equals one of its values. Every value of a field is
// compared, so the time taken does not depend on which one matched.
func (h *Handler) checkAuthHeaders(header http.Header) error {
	for _, a := range h.authHeaders {
		values := header[a.field]
		match := 0
		if len(values) == 1 {
			got := sha256.Sum256([]byte(values[0]))
			for _, d := range a.digests {
				match |= subtle.ConstantTimeCompare(got[:], d[:])
			}
		}
		if match != 1 {
			return fmt.Errorf("missing or wrong %s header", a.field)
		}
	}
	return nil
}

// checkBasic reports whether the request carries one Authorization header
// with Basic credentials of a configured user and one of its passwords.
// Every user and password is compared, so the time taken does not depend
// on which matched, nor on whether the user exists.
func (h *Handler) checkBasic(header http.Header) bool {
	if len(h.basicUsers) == 0 {
		return true
	}
	values := header["Authorization"]
	if len(values) != 1 {
		return false
	}
	// http.Request.BasicAuth's parsing, on this header alone
	r := http.Request{Header: http.Header{"Authorization": values}}
	user, password, ok := r.BasicAuth()
	if !ok {
		return false
	}
	gotUser, gotPassword := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(password))
	match := 0
	for _, u := range h.basicUsers {
		userMatch := subtle.ConstantTimeCompare(gotUser[:], u.user[:])
		passMatch := 0
		for _, p := range u.passwords {
			passMatch |= subtle.ConstantTimeCompare(gotPassword[:], p[:])
		}
		match |= userMatch & passMatch
	}
	return match == 1
}

// checkAuthHeaderConflicts refuses a config that would store, forward or
// key on an auth_header field, or read Authorization twice.
func checkAuthHeaderConflicts(authHeaders []authHeader, basic bool, verifyHeaders, forward, keySources []string) error {
	for _, a := range authHeaders {
		if basic && a.field == "Authorization" {
			return fmt.Errorf("auth_header Authorization with auth_basic: both read the Authorization header; use one")
		}
		for _, f := range forward {
			if http.CanonicalHeaderKey(f) == a.field {
				return fmt.Errorf("forward_headers %s: it is an auth_header, whose secret would be stored with every payload "+
					"and sent upstream; to authenticate to the upstream use header_up", f)
			}
		}
		for _, f := range verifyHeaders {
			if http.CanonicalHeaderKey(f) == a.field {
				return fmt.Errorf("auth_header %s: the verify scheme reads, stores and forwards this header; use another header", a.field)
			}
		}
		for _, src := range keySources {
			if name, ok := strings.CutPrefix(src, "header."); ok && http.CanonicalHeaderKey(name) == a.field {
				return fmt.Errorf("key %s reads the auth_header %s: its secret would become the dedupe key (sent upstream, stored, shown by the admin API); key on something else", src, a.field)
			}
		}
	}
	return nil
}

var errWrongBasic = errors.New("missing or wrong Basic credentials")
