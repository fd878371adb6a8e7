package webhookrelay

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/hookrelay/caddy-webhook-relay/internal/budget"
	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
	"github.com/hookrelay/caddy-webhook-relay/verify"
)

// fromClient is r as Caddy's server hands it on for a client at ip (after
// trusted_proxies), whatever the connection's own address.
func fromClient(r *http.Request, ip string) *http.Request {
	r.RemoteAddr = "203.0.113.99:4321" // a proxy's: not the client
	vars := map[string]any{caddyhttp.ClientIPVarKey: ip}
	ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars)
	return r.WithContext(context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer()))
}

func stripeSignature(secret string, ts time.Time, body []byte) string {
	t := strconv.FormatInt(ts.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(t + "."))
	m.Write(body)
	return "t=" + t + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// TestVerifyHeadersCheckedBeforeTheBody: a verify scheme's headers are
// checked before a byte of the body is read or of max_memory taken; the
// sender reads what is wrong.
func TestVerifyHeadersCheckedBeforeTheBody(t *testing.T) {
	const secret = "whsec_share"
	h := provisioned(t, "share-verify", func(h *Handler) {
		h.AuthQuery = nil
		h.Verify = &verify.Config{Scheme: "stripe", Secrets: []string{secret}}
	})
	body := []byte(`{"id":"evt_1"}`)
	for _, tc := range []struct{ name, header, says string }{
		{"no signature header", "", "Stripe-Signature is missing"},
		{"malformed", "t=abc,v1=zz", "Stripe-Signature is malformed"},
		{"signed an hour ago", stripeSignature(secret, time.Now().Add(-time.Hour), body), "outside the tolerance"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fromClient(httptest.NewRequest(http.MethodPost, "/", nil), "192.0.2.1")
			r.Body = io.NopCloser(untouchable{t})
			r.ContentLength = 1 << 20
			if tc.header != "" {
				r.Header.Set("Stripe-Signature", tc.header)
			}
			status, w := statusOf(t, h, r)
			if status != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", status)
			}
			var got errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got.Status != "error" || !strings.Contains(got.Error, tc.says) {
				t.Errorf("answer %q (%v), want a JSON error saying %q", w.Body, err, tc.says)
			}
			if used := h.relay.memory.Used(); used != 0 {
				t.Errorf("%d bytes of max_memory taken for a request refused on its headers", used)
			}
		})
	}
	r := fromClient(httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body)), "192.0.2.1")
	r.Header.Set("Stripe-Signature", stripeSignature(secret, time.Now(), body))
	if status, w := statusOf(t, h, r); status != http.StatusOK {
		t.Fatalf("a correctly signed webhook: %d %s", status, w.Body)
	}
}

// stalled starts a request from ip announcing n bytes whose body does
// not arrive until the returned function is called; it waits until the
// relay holds the announced bytes for ip and returns a channel with the
// request's status.
func stalled(t *testing.T, h *Handler, ip string, n int64) (release func(), status <-chan int) {
	t.Helper()
	pr, pw := io.Pipe()
	r := fromClient(httptest.NewRequest(http.MethodPost, "/?token=s3cret", nil), ip)
	r.Body, r.ContentLength = pr, n
	done := make(chan int, 1)
	before := h.relay.memory.Held(clientKey(r))
	go func() {
		w := httptest.NewRecorder()
		var he caddyhttp.HandlerError
		if err := h.ServeHTTP(w, r, nil); errors.As(err, &he) {
			done <- he.StatusCode
			return
		}
		done <- w.Code
	}()
	testkit.Eventually(t, 5*time.Second, func() bool { return h.relay.memory.Held(clientKey(r)) >= before+n },
		"the relay never took the %d bytes %s announced", n, ip)
	return func() { pw.CloseWithError(io.ErrUnexpectedEOF) }, done
}

// TestOneClientHoldsItsShare: a client whose bodies still arrive holds at
// most its share of max_memory; beyond it that client, and only it, gets
// 503 with Retry-After. The client is Caddy's client IP, not the
// connection's address.
func TestOneClientHoldsItsShare(t *testing.T) {
	const MiB = 1 << 20
	h := provisioned(t, "share-client", func(h *Handler) { h.MaxMemory, h.MaxBody = 8*MiB, MiB })
	share := h.relay.memory.Limits().Share
	if share != MiB {
		t.Fatalf("share %d, want max_body (1 MiB) for max_memory 8 MiB", share)
	}
	release, status := stalled(t, h, "192.0.2.1", MiB)

	r := fromClient(httptest.NewRequest(http.MethodPost, "/?token=s3cret", nil), "192.0.2.1")
	r.Body, r.ContentLength = io.NopCloser(untouchable{t}), 10
	got, w := statusOf(t, h, r)
	if got != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "share of max_memory") {
		t.Errorf("the same client past its share: %d %q (Retry-After %q), want 503 saying so, with Retry-After", got, w.Body, w.Header().Get("Retry-After"))
	}
	// the same proxy, another client behind it
	r = fromClient(httptest.NewRequest(http.MethodPost, "/?token=s3cret", strings.NewReader(`{"n":1}`)), "192.0.2.2")
	if got, w := statusOf(t, h, r); got != http.StatusOK {
		t.Errorf("another client while the first held its share: %d %s", got, w.Body)
	}
	release()
	if got := <-status; got != http.StatusBadRequest {
		t.Errorf("the stalled body, broken off: %d, want 400", got)
	}
	// (a delivery of the accepted webhook may hold its bytes still)
	for _, ip := range []string{"192.0.2.1", "192.0.2.2"} {
		if held := h.relay.memory.Held(ip); held != 0 {
			t.Errorf("%s holds %d bytes after its requests ended", ip, held)
		}
	}
}

// TestReceivingLeavesTheDeliveryReserve: however many clients send at
// once, intake stops short of what is kept for delivery.
func TestReceivingLeavesTheDeliveryReserve(t *testing.T) {
	const MiB = 1 << 20
	h := provisioned(t, "share-reserve", func(h *Handler) { h.MaxMemory, h.MaxBody = 8*MiB, MiB })
	// max_memory 8 MiB keeps a quarter, 2 MiB, for delivery: six clients
	// sending max_body each fill what intake may hold
	const clients, reserve = 6, 2 * MiB
	var releases []func()
	for i := range clients {
		release, _ := stalled(t, h, "192.0.2."+strconv.Itoa(int(i)+1), MiB)
		releases = append(releases, release)
	}
	r := fromClient(httptest.NewRequest(http.MethodPost, "/?token=s3cret", nil), "192.0.2.100")
	r.Body, r.ContentLength = io.NopCloser(untouchable{t}), 10
	if got, w := statusOf(t, h, r); got != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "max_memory is taken") {
		t.Errorf("intake past max_memory less delivery's reserve: %d %q, want 503", got, w.Body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := h.relay.memory.TakeForDelivery(ctx, reserve); err != nil {
		t.Errorf("delivery could not take its reserve while intake was full: %v", err)
	} else {
		h.relay.memory.GiveFromDelivery(reserve)
	}
	for _, release := range releases {
		release()
	}
}

func TestClientKey(t *testing.T) {
	for _, tc := range []struct{ clientIP, remote, want string }{
		{"192.0.2.7", "10.0.0.1:1", "192.0.2.7"},
		{"::ffff:192.0.2.7", "10.0.0.1:1", "192.0.2.7"},
		// one host's /64 is one client
		{"2001:db8:1:2:aaaa::1", "10.0.0.1:1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:bbbb::2", "10.0.0.1:1", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "10.0.0.1:1", "fe80::/64"},
		// outside Caddy's server (no client IP var): the connection's
		{"", "198.51.100.3:5555", "198.51.100.3"},
		{"", "[2001:db8::9]:5555", "2001:db8::/64"},
	} {
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.RemoteAddr = tc.remote
		if tc.clientIP != "" {
			r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: tc.clientIP}))
		}
		if got := clientKey(r); got != tc.want {
			t.Errorf("client IP %q, remote %q: key %q, want %q", tc.clientIP, tc.remote, got, tc.want)
		}
	}
}

// TestReadBodyTakesWhatItHolds: a body of max_body, announced or not,
// takes max_body (not a byte more, which the client's share may not have),
// and one byte more is 413.
func TestReadBodyTakesWhatItHolds(t *testing.T) {
	const limit = 200 << 10
	mem := budget.New(1<<20, 0)
	mem.SetLimits(budget.Limits{Total: 1 << 20, Share: limit})
	for _, announced := range []bool{true, false} {
		for _, size := range []int{0, 1, 64 << 10, limit} {
			data := bytes.Repeat([]byte("x"), size)
			r := httptest.NewRequest(http.MethodPost, "/", io.NopCloser(bytes.NewReader(data)))
			r.ContentLength = -1
			if announced {
				r.ContentLength = int64(size)
			}
			body, taken, err := readBody(r, limit, mem, "c")
			if err != nil || !bytes.Equal(body, data) || body == nil {
				t.Errorf("announced %v, %d bytes: got %d bytes (nil %v), %v", announced, size, len(body), body == nil, err)
			}
			if taken > limit || announced && taken != int64(size) {
				t.Errorf("announced %v, %d bytes: took %d", announced, size, taken)
			}
			mem.Give("c", taken)
		}
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(bytes.Repeat([]byte("x"), limit+1)))
		r.ContentLength = -1
		_, taken, err := readBody(r, limit, mem, "c")
		if !errors.Is(err, errTooLarge) {
			t.Errorf("max_body + 1 bytes: %v, want errTooLarge", err)
		}
		mem.Give("c", taken)
	}
	if used := mem.Used(); used != 0 {
		t.Errorf("%d bytes held after every body was given back", used)
	}
}
