package delivery

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/hookrelay/caddy-webhook-relay/queue"
	"github.com/hookrelay/caddy-webhook-relay/verify"
)

func TestBuildRequest(t *testing.T) {
	up, _ := url.Parse("http://127.0.0.1:/in?fixed=1")
	s := &Settings{Upstream: up, HeaderUp: http.Header{"X-Extra": {"yes"}, "Idempotency-Key": {"not this"}}}
	e := &queue.Entry{Key: "k", Body: []byte(`{"a":1}`),
		Request: queue.RequestMeta{RawQuery: "b=%20x", ContentType: "application/json", UserAgent: "", ForwardedFor: "10.0.0.1"}}
	req := buildRequest(context.Background(), s, e, 3, time.Now(), new(sentBodies))

	if got := req.URL.String(); got != "http://127.0.0.1:/in?fixed=1&b=%20x" {
		t.Errorf("URL %s", got)
	}
	if *s.Upstream != *up || up.RawQuery != "fixed=1" {
		t.Errorf("the settings' upstream URL was changed: %s", s.Upstream)
	}
	if req.Host != "127.0.0.1" {
		t.Errorf("Host %q, want the empty port dropped", req.Host)
	}
	for field, want := range map[string]string{
		"Content-Type": "application/json", "X-Forwarded-For": "10.0.0.1", "Idempotency-Key": "k",
		AttemptHeader: "3", "X-Extra": "yes",
	} {
		if got := req.Header.Values(field); len(got) != 1 || got[0] != want {
			t.Errorf("%s: %q, want %q", field, got, want)
		}
	}
	if ua, ok := req.Header["User-Agent"]; !ok || len(ua) != 1 || ua[0] != "" {
		t.Errorf("User-Agent %q: want an explicit empty one, so Go adds none", ua)
	}
	for i, read := range []func() (io.ReadCloser, error){
		func() (io.ReadCloser, error) { return req.Body, nil }, req.GetBody, req.GetBody,
	} {
		rc, err := read()
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(rc); string(b) != `{"a":1}` || req.ContentLength != int64(len(b)) {
			t.Errorf("body read %d: %q, ContentLength %d", i, b, req.ContentLength)
		}
	}

	e.Request.RawQuery = "b=1#frag&c=2"
	if got := buildRequest(context.Background(), s, e, 1, time.Now(), new(sentBodies)).URL.RequestURI(); got != "/in?fixed=1&b=1" {
		t.Errorf("a query with #: request target %q, want /in?fixed=1&b=1", got)
	}

	// the upstream's own parameters win: an incoming one of the same name
	// is dropped, however it is spelt, the others are kept as they came
	for _, c := range []struct{ upstream, incoming, want string }{
		{"fixed=1&tenant=acme", "tenant=evil&b=%20x", "fixed=1&tenant=acme&b=%20x"},
		{"tenant=acme", "TENANT=evil&Tenant[]=evil&tenant[x]=evil&%74enant=evil&b=1", "tenant=acme&b=1"},
		{"tenant=acme", "b=1;tenant=evil&c=2", "tenant=acme&c=2"},
		{"tenant=acme", "tenant=evil", "tenant=acme"},
		{"tenant=acme", "tenants=1&x=tenant", "tenant=acme&tenants=1&x=tenant"},
		{"", "tenant=x", "tenant=x"},
	} {
		up, _ := url.Parse("http://127.0.0.1/in?" + c.upstream)
		e.Request.RawQuery = c.incoming
		got := buildRequest(context.Background(), &Settings{Upstream: up}, e, 1, time.Now(), new(sentBodies)).URL.RawQuery
		if got != c.want {
			t.Errorf("upstream ?%s, incoming ?%s: forwarded ?%s, want ?%s", c.upstream, c.incoming, got, c.want)
		}
	}

	e.Body = nil
	req = buildRequest(context.Background(), s, e, 1, time.Now(), new(sentBodies))
	if req.Body != http.NoBody || req.ContentLength != 0 {
		t.Errorf("empty body: Body %v, ContentLength %d; want http.NoBody, 0", req.Body, req.ContentLength)
	}
}

// TestBuildRequestKeptHeadersAndSignature: the sender's kept headers are
// forwarded, header_up and the relay's own headers win over them, and with
// a sign key every attempt carries a Standard Webhooks signature of its own
// time that the standard_webhooks check accepts.
func TestBuildRequestKeptHeadersAndSignature(t *testing.T) {
	const secret = "whsec_" + "c2lnbiB1cHN0cmVhbSB0ZXN0IGtleQ=="
	key, err := verify.StandardKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("http://127.0.0.1:9/in")
	s := &Settings{Upstream: u, HeaderUp: http.Header{"X-Team": {"from-header-up"}}, SignKey: key}
	e := &queue.Entry{Key: "rw:k1", Body: []byte(`{"a":1}`), Request: queue.RequestMeta{Headers: []queue.HeaderField{
		{Name: "X-Github-Event", Value: "push"}, {Name: "X-Team", Value: "from-sender"},
		{Name: "Idempotency-Key", Value: "forged"}, {Name: "Webhook-Signature", Value: "v1,forged"},
	}}}
	at := time.Unix(1_800_000_000, 0)
	h := buildRequest(context.Background(), s, e, 2, at, new(sentBodies)).Header
	for name, want := range map[string]string{
		"X-Github-Event": "push", "X-Team": "from-header-up", "Idempotency-Key": "rw:k1",
		"Webhook-Id": "rw:k1", "Webhook-Timestamp": "1800000000",
	} {
		if got := h.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want [%q]", name, got, want)
		}
	}
	v, err := verify.New(verify.Config{Scheme: "standard_webhooks", Secrets: []string{secret}}, func(s string) (string, error) { return s, nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(&http.Request{Header: h}, e.Body, at.Add(time.Minute)); err != nil {
		t.Errorf("the attempt's signature does not verify: %v", err)
	}
}
