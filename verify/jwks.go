package verify

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Bounds of fetching a key set.
const (
	jwksMaxBytes = 1 << 20          // a key set larger than this is refused
	jwksTimeout  = 10 * time.Second // one fetch, connection to last byte
	// jwksMinInterval is how long after one fetch the next may be made,
	// but for the first: a signature that matches no cached key fetches
	// the keys again (a rotation), and forged signatures must not make
	// the relay hammer the sender's key server.
	jwksMinInterval = 30 * time.Second
	// jwksMaxAge is how long fetched keys are used before they are
	// fetched again, so that a key the sender withdrew stops passing.
	jwksMaxAge = 24 * time.Hour
)

// jwks are the Ed25519 keys of a JSON Web Key Set a sender publishes,
// fetched when a request first needs them (never while the config loads,
// which must not fail because the sender's server is unreachable), and
// cached.
type jwks struct {
	url    string
	client *http.Client
	logger *zap.Logger

	fetching sync.Mutex // held through a fetch: one at a time

	mu        sync.Mutex // guards what follows
	keys      []ed25519.PublicKey
	fetchedAt time.Time // when keys were fetched
	gen       uint64    // fetches attempted; 0: none yet
	notBefore time.Time // no fetch before this
	err       error     // the last fetch's failure; nil when it succeeded
}

func newJWKS(url string, logger *zap.Logger) *jwks {
	return &jwks{url: url, client: &http.Client{Timeout: jwksTimeout}, logger: logger}
}

// get returns the keys to check with and their generation. It fetches them
// first when none are cached, when they are older than jwksMaxAge, or when
// missed is the generation whose keys matched no signature (0: none
// missed), as far as jwksMinInterval allows. err is the last fetch's
// failure: with no keys, nothing can be checked now.
func (j *jwks) get(ctx context.Context, now time.Time, missed uint64) ([]ed25519.PublicKey, uint64, error) {
	j.mu.Lock()
	keys, gen, err := j.keys, j.gen, j.err
	want := len(keys) == 0 || !now.Before(j.fetchedAt.Add(jwksMaxAge)) || (missed != 0 && missed == gen)
	allowed := !now.Before(j.notBefore)
	j.mu.Unlock()
	if !want || !allowed {
		return keys, gen, err
	}

	j.fetching.Lock()
	defer j.fetching.Unlock()
	j.mu.Lock()
	if j.gen != gen { // fetched while this request waited
		defer j.mu.Unlock()
		return j.keys, j.gen, j.err
	}
	j.mu.Unlock()

	fetched, err := j.fetch(ctx)

	j.mu.Lock()
	defer j.mu.Unlock()
	j.gen++
	if err != nil {
		if j.err == nil {
			j.logger.Error("cannot fetch the keys the sender signs with: requests no cached key can check are answered 503 until they can be fetched",
				zap.String("jwks", j.url), zap.Error(err))
		}
		j.err, j.notBefore = err, now.Add(jwksMinInterval)
		return j.keys, j.gen, j.err
	}
	if j.err != nil {
		j.logger.Info("fetched the keys the sender signs with again", zap.String("jwks", j.url), zap.Int("keys", len(fetched)))
	}
	if len(j.keys) > 0 { // the first fetch is free, so a rotation right after it is still seen
		j.notBefore = now.Add(jwksMinInterval)
	}
	j.keys, j.fetchedAt, j.err = fetched, now, nil
	return j.keys, j.gen, nil
}

// fetch gets the key set and decodes its Ed25519 keys (kty OKP, crv
// Ed25519, x the key in base64url), ignoring keys of other kinds.
func (j *jwks) fetch(ctx context.Context) ([]ed25519.PublicKey, error) {
	ctx, cancel := context.WithTimeout(ctx, jwksTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s answered %s", j.url, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %v", j.url, err)
	}
	if len(data) > jwksMaxBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a key set", j.url, jwksMaxBytes)
	}
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Crv string `json:"crv"`
			Use string `json:"use"`
			X   string `json:"x"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("%s is not a JSON Web Key Set: %v", j.url, err)
	}
	var keys []ed25519.PublicKey
	for _, k := range set.Keys {
		if k.Kty != "OKP" || k.Crv != "Ed25519" || (k.Use != "" && k.Use != "sig") {
			continue
		}
		x, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(k.X, "="))
		if err == nil && len(x) == ed25519.PublicKeySize {
			keys = append(keys, ed25519.PublicKey(x))
		}
	}
	if len(keys) == 0 {
		return nil, errors.New(j.url + " holds no Ed25519 signing key (kty OKP, crv Ed25519)")
	}
	return keys, nil
}
