package processtest

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ChaosWeather is how a ChaosUpstream answers.
type ChaosWeather int32

const (
	// WeatherHealthy answers 200 at once.
	WeatherHealthy ChaosWeather = iota
	// WeatherFlapping answers each request with a random one of: 503,
	// a connection reset, a hang past the relay's timeout, a slow 200, a
	// quick 200.
	WeatherFlapping
	// WeatherDown503 answers 503 to everything.
	WeatherDown503
	// WeatherHang holds every request until the relay gives up on it.
	WeatherHang
	// WeatherSlow answers 200 after 200-800ms (below the relay's timeout
	// of 1s in the fault tests).
	WeatherSlow
)

func (w ChaosWeather) String() string {
	return [...]string{"healthy", "flapping", "503", "hang", "slow"}[w]
}

// chaosHang is how long a hanging answer holds the request: well past the
// relay's 1s timeout in the fault tests.
const chaosHang = 3 * time.Second

// chaosDelivery is what the upstream saw of one sim payload.
type chaosDelivery struct {
	first time.Time // first 2xx written
	count int       // 2xx written
	key   string    // Idempotency-Key of the first 2xx
	sum   [32]byte  // SHA-256 of the body of the first 2xx
}

// ChaosUpstream is a webhook receiver that identifies payloads by the
// "simID" field the sender simulator puts in each body, records when each
// was first answered 2xx and with which Idempotency-Key, and misbehaves on
// demand (see ChaosWeather). It can be stopped (connections refused) and
// started again on the same port.
type ChaosUpstream struct {
	portServer

	weather atomic.Int32

	mu        sync.Mutex
	rng       *rand.Rand
	delivered map[string]*chaosDelivery // simID -> deliveries
	keyOwner  map[string]string         // Idempotency-Key -> simID
	problems  []string                  // key conflicts, body mismatches, unparsable bodies
	answers   map[string]int            // outcome -> count
}

// NewChaosUpstream makes an upstream on a free port, healthy and not yet
// started; its random choices come from seed.
func NewChaosUpstream(t testing.TB, seed uint64) *ChaosUpstream {
	u := &ChaosUpstream{
		rng:       rand.New(rand.NewPCG(seed, 0xc4a05)),
		delivered: make(map[string]*chaosDelivery),
		keyOwner:  make(map[string]string),
		answers:   make(map[string]int),
	}
	u.portServer = newPortServer(t, u.serve)
	return u
}

// SetWeather changes how the upstream answers from now on.
func (u *ChaosUpstream) SetWeather(w ChaosWeather) { u.weather.Store(int32(w)) }

// Weather is how the upstream answers now.
func (u *ChaosUpstream) Weather() ChaosWeather { return ChaosWeather(u.weather.Load()) }

// simIDOf finds the sim id of a body: top-level "simID" (a bare item) or
// that of the first item of "data".
func simIDOf(body []byte) string {
	var b struct {
		SimID string `json:"simID"`
		Data  []struct {
			SimID string `json:"simID"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &b) != nil {
		return ""
	}
	if b.SimID != "" {
		return b.SimID
	}
	if len(b.Data) > 0 {
		return b.Data[0].SimID
	}
	return ""
}

func (u *ChaosUpstream) count(outcome string) {
	u.mu.Lock()
	u.answers[outcome]++
	u.mu.Unlock()
}

func (u *ChaosUpstream) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		u.count("read_error")
		return
	}
	outcome := "ok"
	var slow time.Duration
	u.mu.Lock()
	switch u.Weather() {
	case WeatherFlapping:
		switch x := u.rng.IntN(100); {
		case x < 30:
			outcome = "503"
		case x < 45:
			outcome = "reset"
		case x < 55:
			outcome = "hang"
		case x < 70:
			outcome = "slow"
		}
	case WeatherDown503:
		outcome = "503"
	case WeatherHang:
		outcome = "hang"
	case WeatherSlow:
		outcome = "slow"
	}
	if outcome == "slow" {
		slow = 200*time.Millisecond + time.Duration(u.rng.IntN(600))*time.Millisecond
	}
	u.answers[outcome]++
	u.mu.Unlock()

	switch outcome {
	case "503":
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case "reset":
		hj, ok := w.(http.Hijacker)
		if !ok {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		conn, _, err := hj.Hijack()
		if err != nil {
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		_ = conn.Close()
		return
	case "hang":
		select {
		case <-time.After(chaosHang):
			w.WriteHeader(http.StatusGatewayTimeout)
		case <-r.Context().Done():
		}
		return
	case "slow":
		select {
		case <-time.After(slow):
		case <-r.Context().Done():
			return // the relay gave up: not delivered
		}
	}

	id := simIDOf(body)
	key := r.Header.Get("Idempotency-Key")
	now := time.Now()
	u.mu.Lock()
	switch {
	case id == "":
		u.problems = append(u.problems, fmt.Sprintf("body without simID: %.200s", body))
	default:
		if owner, ok := u.keyOwner[key]; ok && owner != id {
			u.problems = append(u.problems, fmt.Sprintf("Idempotency-Key %q carried by %s and %s", key, owner, id))
		} else if !ok {
			u.keyOwner[key] = id
		}
		d := u.delivered[id]
		if d == nil {
			d = &chaosDelivery{first: now, key: key, sum: sha256.Sum256(body)}
			u.delivered[id] = d
		} else {
			if d.key != key {
				u.problems = append(u.problems, fmt.Sprintf("%s delivered with keys %q and %q", id, d.key, key))
			}
			if d.sum != sha256.Sum256(body) {
				u.problems = append(u.problems, fmt.Sprintf("%s delivered with two different bodies", id))
			}
		}
		d.count++
	}
	u.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// Deliveries returns a snapshot: simID -> first delivery time, count, key,
// body hash.
func (u *ChaosUpstream) Deliveries() map[string]chaosDelivery {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make(map[string]chaosDelivery, len(u.delivered))
	for id, d := range u.delivered {
		out[id] = *d
	}
	return out
}

// DeliveredCount is how many distinct payloads were delivered.
func (u *ChaosUpstream) DeliveredCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.delivered)
}

// Problems lists what the upstream found wrong: one Idempotency-Key on two
// payloads, a payload under two keys or with two bodies, a body it could
// not identify.
func (u *ChaosUpstream) Problems() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.problems...)
}

// Answers counts the upstream's answers by outcome (ok, 503, reset, hang,
// slow).
func (u *ChaosUpstream) Answers() map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make(map[string]int, len(u.answers))
	for k, v := range u.answers {
		out[k] = v
	}
	return out
}
