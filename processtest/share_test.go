package processtest

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// Slow senders against a verified relay: clients from addresses of their
// own (127.0.0.2 and 127.0.0.3: all of 127.0.0.0/8 reaches the loopback
// interface on Linux) announce bodies that add up to max_memory, with a
// well-formed, current Stripe-Signature (a replayed header passes every
// check that needs no body), and send them one byte a second, reconnecting
// as soon as they are cut off. Meanwhile Stripe-signed webhooks from
// 127.0.0.1 must each get 200 within a second and be delivered, and the
// slow senders must be cut at body_timeout (or refused at once).
//
// Before the client shares, the announced lengths took all of max_memory:
// every signed webhook got 503 and deliveries stopped.
//
//	go test -race -count=1 -v -run SlowSenders ./processtest/
const (
	ssMaxMemory   = 8 << 20
	ssMaxBody     = 1 << 20
	ssBodyTimeout = 3 * time.Second
	ssSecret      = "whsec_processtest_share"
	ssRelay       = "share"

	// ssConns slow connections at a time, half from each address, each
	// announcing ssAnnounced bytes: together max_memory (the relay before
	// the shares took one byte more than announced; these fill it exactly).
	ssConns     = 8
	ssAnnounced = ssMaxMemory/ssConns - 1

	ssWebhooks = 10                     // signed webhooks sent while the slow senders hold on
	ssEvery    = 350 * time.Millisecond // one every: 3.5 s in all, past one body_timeout
	ssAckBound = time.Second            // each must be answered within
	// and reach the upstream within, after it was sent
	ssDeliveryBound = 2 * time.Second
	// a slow connection must have ended by body_timeout plus this
	ssCutSlack = 2 * time.Second
)

func TestSlowSendersDoNotStarveSignedWebhooks(t *testing.T) {
	if c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", "127.0.0.1:1"); err != nil && isBindErr(err) {
		testkit.Unavailable(t, "cannot send from 127.0.0.2 (all of 127.0.0.0/8 is loopback on Linux only): %v", err)
	} else if c != nil {
		c.Close()
	}
	up := NewUpstream(t)
	up.Start()
	in := NewInstance(t)
	in.Start(fmt.Sprintf(`http://127.0.0.1:{http_port} {
	webhook_relay %s {
		name %s
		store bolt
		verify stripe %s
		max_memory %d
		max_body %d
		body_timeout %s
	}
}`, up.URL("/hook"), ssRelay, ssSecret, ssMaxMemory, ssMaxBody, ssBodyTimeout))

	slow := startSlowSenders(t, fmt.Sprintf("127.0.0.1:%d", in.HTTPPort), []string{"127.0.0.2", "127.0.0.3"})
	// in place: every first connection has sent its head, and the relay
	// holds bodies (before the shares: all of max_memory)
	testkit.Eventually(t, 10*time.Second, func() bool {
		ov, err := faultOverview(in, ssRelay)
		return err == nil && ov.MemoryBytes >= 2*ssAnnounced && slow.started() >= ssConns
	}, "the slow senders never took their place: %s", testkit.Lazy(func() string { return lbOverviewOf(in, ssRelay) }))
	t.Logf("slow senders in place: %s", lbOverviewOf(in, ssRelay))

	var worst time.Duration
	accepted := 0
	sentAt := map[string]time.Time{}
	tick := time.NewTicker(ssEvery)
	defer tick.Stop()
	for i := range ssWebhooks {
		body := fmt.Sprintf(`{"id":"evt_share_%d","object":"event","type":"payment_intent.succeeded"}`, i)
		sent := time.Now()
		r := postStripe(in.URL("/hook"), body, stripeHeader(ssSecret, sent, body))
		worst = max(worst, r.Took)
		if r.accepted() {
			accepted++
			sentAt[fmt.Sprintf(`"evt_share_%d"`, i)] = sent
		}
		if !r.accepted() || r.Took > ssAckBound {
			t.Errorf("signed webhook %d while the slow senders held on: %s; want 200 accepted within %s (%s)", i, r, ssAckBound, lbOverviewOf(in, ssRelay))
		}
		<-tick.C
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return len(up.Delivered()) == ssWebhooks },
		"the signed webhooks were not all delivered while the slow senders held on: %s; relay %s",
		testkit.Lazy(func() string { return fmt.Sprint(up.Delivered()) }), testkit.Lazy(func() string { return lbOverviewOf(in, ssRelay) }))
	// each delivered soon after it was sent, while the slow senders held on
	var slowestDelivery time.Duration
	for _, req := range up.Requests() {
		for id, at := range sentAt {
			if strings.Contains(string(req.Body), id) {
				slowestDelivery = max(slowestDelivery, req.At.Sub(at))
			}
		}
	}
	if slowestDelivery > ssDeliveryBound {
		t.Errorf("a signed webhook reached the upstream %s after it was sent, want within %s", slowestDelivery, ssDeliveryBound)
	}

	ends := slow.stop()
	counts := map[string]int{}
	var longest time.Duration
	for _, e := range ends {
		counts[e.what]++
		longest = max(longest, e.took)
		switch {
		case e.what == "200":
			t.Errorf("a slow sender was accepted: %+v", e)
		case e.what == "503" && !e.retryAfter:
			t.Errorf("a slow sender got 503 without Retry-After: %+v", e)
		case e.what == "503" && e.took > ssAckBound:
			t.Errorf("a slow sender's 503 took %s: the answer waited on the body it refuses", e.took)
		case e.what == "408" && e.took < ssBodyTimeout-500*time.Millisecond:
			t.Errorf("a slow sender got 408 after %s, before body_timeout (%s)", e.took, ssBodyTimeout)
		case e.what != "408" && e.what != "503" && e.what != "closed":
			t.Errorf("a slow sender's connection ended with %s after %s, want 408, 503 or a closed connection", e.what, e.took)
		}
		if e.took > ssBodyTimeout+ssCutSlack {
			t.Errorf("a slow sender held on for %s (%s), past body_timeout (%s)", e.took, e.what, ssBodyTimeout)
		}
	}
	if counts["408"] == 0 {
		t.Errorf("no slow sender was cut at body_timeout with 408: %v", counts)
	}
	t.Logf("signed webhooks: %d of %d accepted, slowest answer %s, slowest send-to-delivery %s; "+
		"slow connections: %d ended (%v), longest %s", accepted, ssWebhooks, worst.Round(time.Millisecond),
		slowestDelivery.Round(time.Millisecond), len(ends), counts, longest.Round(time.Millisecond))
}

func lbOverviewOf(in *Instance, name string) string {
	ov, err := faultOverview(in, name)
	if err != nil {
		return "(admin API: " + err.Error() + ")"
	}
	return fmt.Sprintf("memory %d bytes, %s", ov.MemoryBytes, fmtOverview(ov))
}

// stripeHeader is the Stripe-Signature of body at ts, as Stripe documents
// it: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the
// endpoint's secret>. (caddytest proves the relay against Stripe's own
// library.)
func stripeHeader(secret string, ts time.Time, body string) string {
	t := strconv.FormatInt(ts.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(t + "." + body))
	return "t=" + t + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// postStripe posts body with its Stripe-Signature from 127.0.0.1.
func postStripe(url, body, signature string) response {
	start := time.Now()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return response{Err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Stripe-Signature", signature)
	resp, err := httpClient.Do(req)
	if err != nil {
		return response{Err: err, Took: time.Since(start)}
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	return response{Status: resp.StatusCode, Body: strings.TrimSpace(b.String()),
		RetryAfter: resp.Header.Get("Retry-After"), Took: time.Since(start)}
}

// slowSenders keep ssConns slow connections open, half from each address,
// each reconnecting when it ends, until stop.
type slowSenders struct {
	t     *testing.T
	addr  string
	start time.Time
	quit  chan struct{}
	wg    sync.WaitGroup

	mu    sync.Mutex
	conns int       // connections that sent their head
	ends  []slowEnd // connections that ended before stop
}

// slowEnd is how one slow connection ended: the status it got ("408",
// "503"), or "closed", and how long after its head.
type slowEnd struct {
	what       string
	took       time.Duration
	retryAfter bool
}

func startSlowSenders(t *testing.T, addr string, from []string) *slowSenders {
	s := &slowSenders{t: t, addr: addr, start: time.Now(), quit: make(chan struct{})}
	for i := range ssConns {
		s.wg.Add(1)
		go s.run(from[i%len(from)])
	}
	t.Cleanup(func() { s.stop() })
	return s
}

func (s *slowSenders) started() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

func (s *slowSenders) since() time.Duration { return time.Since(s.start) }

// stop ends the slow senders and returns how their connections ended.
func (s *slowSenders) stop() []slowEnd {
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ends
}

func (s *slowSenders) run(from string) {
	defer s.wg.Done()
	for {
		select {
		case <-s.quit:
			return
		default:
		}
		end, ok := s.once(from)
		if !ok {
			return // stopped
		}
		s.mu.Lock()
		s.ends = append(s.ends, end)
		s.mu.Unlock()
		if end.what == "503" {
			// refused at once: come back as a client honouring no
			// Retry-After would, but without spinning a CPU
			select {
			case <-s.quit:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
}

// once sends one slow request from the address from: the head and a byte,
// then a byte a second, until the relay answers or closes. ok is false
// when stop ended it.
func (s *slowSenders) once(from string) (end slowEnd, ok bool) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", s.addr)
	if err != nil {
		s.t.Errorf("slow sender from %s: %v", from, err)
		return slowEnd{}, false
	}
	defer conn.Close()
	// a current, well-formed signature that is not the body's (the
	// sender has no secret): only the body can show it is wrong
	var sig [32]byte
	_, _ = rand.Read(sig[:])
	head := fmt.Sprintf("POST /hook HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"+
		"Stripe-Signature: t=%d,v1=%x\r\n\r\n{", s.addr, ssAnnounced, time.Now().Unix(), sig)
	start := time.Now()
	if _, err := conn.Write([]byte(head)); err != nil {
		return slowEnd{what: "closed", took: time.Since(start)}, true
	}
	s.mu.Lock()
	s.conns++
	s.mu.Unlock()

	answered := make(chan slowEnd, 1)
	go func() {
		// bounded, so that a relay that never cuts the sender fails the
		// test instead of hanging it
		_ = conn.SetReadDeadline(start.Add(ssBodyTimeout + ssCutSlack + 5*time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		took := time.Since(start)
		switch {
		case err == nil:
			resp.Body.Close()
			answered <- slowEnd{what: strconv.Itoa(resp.StatusCode), took: took, retryAfter: resp.Header.Get("Retry-After") != ""}
		case isTimeoutErr(err):
			answered <- slowEnd{what: "still open", took: took}
		default:
			answered <- slowEnd{what: "closed", took: took}
		}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case end := <-answered:
			return end, true
		case <-s.quit:
			return slowEnd{}, false
		case <-tick.C:
			// a write error means the relay closed: the reader sees it
			_, _ = conn.Write([]byte(" "))
		}
	}
}

func isBindErr(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL)
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
