package verify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"time"
)

// sendgrid is SendGrid's signed Event Webhook:
// X-Twilio-Email-Event-Webhook-Signature, the base64 DER ECDSA P-256
// signature of the SHA-256 of X-Twilio-Email-Event-Webhook-Timestamp
// followed by the body; the relay is configured with the verification key
// SendGrid shows (base64 DER).
//
// SendGrid documents no tolerance for the timestamp and its libraries
// check none; the relay applies the default, as for the other timestamped
// schemes, so that a captured batch cannot be replayed.
var sendgrid = &scheme{
	name:       "sendgrid",
	defaultKey: []string{"body"},
	headers:    []string{"X-Twilio-Email-Event-Webhook-Signature", "X-Twilio-Email-Event-Webhook-Timestamp"},
	tolerance:  5 * time.Minute,
	publicKey:  sendgridKey,
	parse: parseSignedTime(signedTime{sigH: "X-Twilio-Email-Event-Webhook-Signature", tsH: "X-Twilio-Email-Event-Webhook-Timestamp",
		form: "the base64 of an ECDSA signature (ASN.1 DER)",
		decode: func(raw string) ([]byte, bool) {
			sig, err := base64.StdEncoding.DecodeString(raw)
			return sig, err == nil && isDERSignature(sig)
		},
		before: timestampFirst,
	}),
	check: checkSendGrid,
}

// sendgridKey decodes the verification key as SendGrid shows it: the
// base64 of a DER (PKIX) P-256 public key. A PEM block of it is taken too.
func sendgridKey(secret string) (crypto.PublicKey, error) {
	const want = "want the verification key as SendGrid shows it: the base64 of an ECDSA P-256 public key"
	secret = strings.TrimSpace(secret)
	var der []byte
	if block, _ := pem.Decode([]byte(secret)); block != nil {
		der = block.Bytes
	} else {
		var err error
		if der, err = base64.StdEncoding.DecodeString(secret); err != nil {
			return nil, errors.New("not base64: " + want)
		}
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, errors.New("not a public key (DER, PKIX): " + want)
	}
	key, ok := pub.(*ecdsa.PublicKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, errors.New("a public key, but not ECDSA P-256: " + want)
	}
	return key, nil
}

// isDERSignature reports whether sig is an ASN.1 DER SEQUENCE of two
// positive INTEGERs and nothing after it, as ECDSA signatures are sent.
func isDERSignature(sig []byte) bool {
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(sig, &rs)
	return err == nil && len(rest) == 0 && rs.R.Sign() > 0 && rs.S.Sign() > 0
}

// checkSendGrid checks the ECDSA signature of the SHA-256 of the signed
// parts and the body under each configured key.
func checkSendGrid(v *Verifier, s signed, _ *http.Request, body []byte) error {
	d := sha256.New()
	for _, p := range s.before {
		d.Write(p)
	}
	d.Write(body)
	digest := d.Sum(nil)
	for _, k := range v.pubKeys {
		key, ok := k.(*ecdsa.PublicKey)
		if !ok {
			continue
		}
		for _, sig := range s.sigs {
			if ecdsa.VerifyASN1(key, digest, sig) {
				return nil
			}
		}
	}
	return failf("no signature in %s matches the configured verification key(s): a wrong or rotated key, or a body changed on the way", s.header)
}
