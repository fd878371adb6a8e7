package verify

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"net/http"
	"time"

	"golang.org/x/net/http/httpguts"
)

// hmacParams set up the generic scheme: an HMAC of the raw body in one
// header, for any sender that signs that way.
type hmacParams struct {
	header string
	prefix string
	decode func(string) ([]byte, error)
	form   string // what the header should look like, for errors
}

func newHMACParams(cfg Config) (*hmacParams, func() hash.Hash, error) {
	if cfg.Header == "" {
		return nil, nil, fmt.Errorf("verify hmac: header is required: the header that carries the signature, e.g. X-Signature")
	}
	if !httpguts.ValidHeaderFieldName(cfg.Header) {
		return nil, nil, fmt.Errorf("verify hmac: header %q is not a valid header name", cfg.Header)
	}
	var newHash func() hash.Hash
	switch cfg.Algorithm {
	case "", "sha256":
		newHash = sha256.New
	case "sha512":
		newHash = sha512.New
	case "sha1":
		newHash = sha1.New
	default:
		return nil, nil, fmt.Errorf("verify hmac: algorithm %q: use sha256, sha512 or sha1", cfg.Algorithm)
	}
	p := &hmacParams{header: http.CanonicalHeaderKey(cfg.Header), prefix: cfg.Prefix}
	switch cfg.Encoding {
	case "", "hex":
		p.decode, p.form = hex.DecodeString, cfg.Prefix+"<hex>"
	case "base64":
		p.decode, p.form = base64.StdEncoding.DecodeString, cfg.Prefix+"<base64>"
	default:
		return nil, nil, fmt.Errorf("verify hmac: encoding %q: use hex or base64", cfg.Encoding)
	}
	return p, newHash, nil
}

func parseHMAC(v *Verifier, h http.Header, _ time.Time) (signed, error) {
	p := v.hmac
	return bodyMAC(h, p.header, p.prefix, p.decode, p.form)
}
