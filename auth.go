package webhookrelay

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// checkQuery reads the auth parameters out of a raw query string in one
// pass, with url.ParseQuery's rules (names and values are decoded, so
// "tok%65n" is "token"; ";" and bad escapes make the query malformed), and
// returns the query without them, keeping the order and encoding of
// everything else, so that no secret is stored or forwarded.
//
// It fails with errMalformedQuery for a query the auth parameters cannot
// be read from, and with errWrongAuth unless every auth parameter is present
// exactly once with one of its secrets. Every configured secret is
// compared, so the time taken does not depend on which one matched.
func (h *Handler) checkQuery(rawQuery string) (stripped string, err error) {
	if len(h.auth) == 0 {
		return rawQuery, nil
	}
	if strings.Count(rawQuery, "&") >= maxQueryParams {
		return "", errMalformedQuery // ParseQuery's limit, by default
	}
	var countsBuf, matchesBuf [4]int
	counts, matches := countsBuf[:0], matchesBuf[:0]
	for range h.auth {
		counts, matches = append(counts, 0), append(matches, 0)
	}
	wellFormed := true
	var kept strings.Builder
	for part := range strings.SplitSeq(rawQuery, "&") {
		if part == "" {
			continue
		}
		if strings.Contains(part, ";") {
			wellFormed = false // as ParseQuery: "invalid semicolon separator"
			continue
		}
		rawName, rawValue, _ := strings.Cut(part, "=")
		name, nameErr := unescapeQuery(rawName)
		if nameErr != nil {
			wellFormed = false
			continue
		}
		i := h.authIndex(name)
		if i < 0 {
			if !validEscapes(rawValue) {
				wellFormed = false // ParseQuery rejects the whole query
				continue
			}
			if kept.Len() > 0 {
				kept.WriteByte('&')
			} else {
				kept.Grow(len(rawQuery))
			}
			kept.WriteString(part)
			continue
		}
		counts[i]++
		value, valueErr := unescapeQuery(rawValue)
		if valueErr != nil {
			wellFormed = false
			continue
		}
		got := sha256.Sum256([]byte(value))
		for _, d := range h.auth[i].digests {
			matches[i] |= subtle.ConstantTimeCompare(got[:], d[:])
		}
	}
	if !wellFormed {
		return "", errMalformedQuery
	}
	for i := range h.auth {
		if counts[i] != 1 || matches[i] != 1 {
			return "", errWrongAuth
		}
	}
	return kept.String(), nil
}

// maxQueryParams is url.ParseQuery's default limit on parameters.
const maxQueryParams = 10000

var (
	errMalformedQuery = errors.New("malformed query string; the auth parameters cannot be read")
	errWrongAuth      = errors.New("missing or wrong auth query parameter")
)

func (h *Handler) authIndex(name string) int {
	for i, p := range h.auth {
		if p.name == name {
			return i
		}
	}
	return -1
}

// unescapeQuery decodes a query name or value, skipping the work (and the
// allocation) when there is nothing to decode.
func unescapeQuery(s string) (string, error) {
	if !strings.ContainsAny(s, "%+") {
		return s, nil
	}
	return url.QueryUnescape(s)
}

// validEscapes reports whether every "%" in s starts a two-digit hex
// escape, which is all url.QueryUnescape can fail on.
func validEscapes(s string) bool {
	for i := strings.IndexByte(s, '%'); i >= 0; {
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return false
		}
		next := strings.IndexByte(s[i+3:], '%')
		if next < 0 {
			break
		}
		i += 3 + next
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func (h *Handler) authParamNames() string {
	names := make([]string, len(h.auth))
	for i, p := range h.auth {
		names[i] = p.name
	}
	return strings.Join(names, ", ")
}

// authParam is one auth query parameter with the SHA-256 digests of its
// secrets: comparing fixed-size digests keeps the compare constant time
// whatever the lengths.
type authParam struct {
	name    string
	digests [][sha256.Size]byte
}

var placeholder = regexp.MustCompile(`\{[^{}]+\}`)

// placeholderNames lists the placeholders in a configured secret, and never
// the literal text around them, which may be part of the secret.
func placeholderNames(raw string) string {
	return strings.Join(placeholder.FindAllString(raw, -1), ", ")
}

func compileAuth(repl *caddy.Replacer, cfg map[string][]string) ([]authParam, error) {
	params := make([]authParam, 0, len(cfg))
	for name, secrets := range cfg {
		if name == "" {
			return nil, fmt.Errorf("auth_query: empty parameter name")
		}
		if len(secrets) == 0 {
			return nil, fmt.Errorf("auth_query %s: no secret given", name)
		}
		p := authParam{name: name}
		for i, raw := range secrets {
			// Any placeholder resolving to empty is an error, not only a
			// wholly empty secret: "whk_{env.UNSET}" would be guessable.
			secret, err := repl.ReplaceOrErr(raw, true, true)
			if err != nil || secret == "" {
				// Name the placeholder, never a literal value: it may be
				// the secret itself.
				what := fmt.Sprintf("secret #%d", i+1)
				if names := placeholderNames(raw); names != "" {
					what += " (placeholders " + names + ")"
				}
				return nil, fmt.Errorf("auth_query %s: %s resolves to empty or has an empty placeholder; set it (an empty secret would let anyone in)", name, what)
			}
			p.digests = append(p.digests, sha256.Sum256([]byte(secret)))
		}
		params = append(params, p)
	}
	return params, nil
}
