package verify

import (
	"crypto"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// discord is Discord's webhook events (and interactions) signature:
// X-Signature-Ed25519, the hex Ed25519 signature of X-Signature-Timestamp
// followed by the body, under the application's key pair; the relay is
// configured with its public key.
//
// Discord's own libraries do not check the timestamp; the relay does, with
// the default tolerance, so that a captured request cannot be replayed
// once its key has left the dedupe window.
var discord = &scheme{
	name:       "discord",
	defaultKey: []string{"body"},
	headers:    []string{"X-Signature-Ed25519", "X-Signature-Timestamp"},
	tolerance:  5 * time.Minute,
	publicKey:  discordKey,
	parse: parseSignedTime(signedTime{sigH: "X-Signature-Ed25519", tsH: "X-Signature-Timestamp",
		form: fmt.Sprintf("%d hex digits (an Ed25519 signature)", 2*ed25519.SignatureSize),
		decode: func(raw string) ([]byte, bool) {
			sig, err := hex.DecodeString(raw)
			return sig, err == nil && len(sig) == ed25519.SignatureSize
		},
		before: timestampFirst,
	}),
	check:     checkEd25519,
	handshake: discordPing,
}

// discordKey decodes an application's public key as the Developer Portal
// shows it: 32 bytes in hex.
func discordKey(secret string) (crypto.PublicKey, error) {
	b, err := hex.DecodeString(strings.TrimSpace(secret))
	switch {
	case err != nil:
		return nil, errors.New("not hex: want the application's public key as the Developer Portal shows it, 64 hex digits")
	case len(b) != ed25519.PublicKeySize:
		return nil, fmt.Errorf("%d bytes, but an Ed25519 public key is %d: want the application's public key as the Developer Portal shows it, 64 hex digits", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// checkEd25519 checks the Ed25519 signature of the signed parts and the
// body under each configured public key.
func checkEd25519(v *Verifier, s signed, _ *http.Request, body []byte) error {
	msg := message(s.before, body)
	for _, k := range v.pubKeys {
		if key, ok := k.(ed25519.PublicKey); ok && signedBy(key, s.sigs, msg) {
			return nil
		}
	}
	return failf("no signature in %s matches the configured public key(s): a wrong or rotated key, or a body changed on the way", s.header)
}

// signedBy reports whether any of sigs is msg's Ed25519 signature under
// key.
func signedBy(key ed25519.PublicKey, sigs [][]byte, msg []byte) bool {
	for _, sig := range sigs {
		if ed25519.Verify(key, msg, sig) {
			return true
		}
	}
	return false
}

// message joins the signed parts and the body: Ed25519 signs the whole
// message, not a digest that could be written piece by piece.
func message(before [][]byte, body []byte) []byte {
	n := len(body)
	for _, p := range before {
		n += len(p)
	}
	msg := make([]byte, 0, n)
	for _, p := range before {
		msg = append(msg, p...)
	}
	return append(msg, body...)
}

// discordPing answers the PING Discord sends, signed, to check a webhook
// events URL before it sends events to it: {"type":0,...}, answered 204
// with no body.
//
// An interactions endpoint's PING ({"type":1}, answered {"type":1}) is not
// answered: type 1 is an event on a webhook events URL, and an
// interactions endpoint needs the app's own answer to every interaction,
// which a relay that answers before the app sees the request cannot give.
func discordPing(_ *Verifier, _ *http.Request, body []byte) (*Answer, error) {
	var doc struct {
		Type json.RawMessage `json:"type"`
	}
	if json.Unmarshal(body, &doc) != nil || string(doc.Type) != "0" {
		return nil, nil
	}
	return &Answer{Status: http.StatusNoContent}, nil
}
