package caddytest

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func basic(user, password string) string {
	return "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// noneCarries fails the test if a request the upstream got carries one of
// the secrets in a header, the URL or the body.
func noneCarries(t *testing.T, hits []*hit, secrets ...string) {
	t.Helper()
	for _, h := range hits {
		for name, values := range h.Header {
			for _, v := range values {
				for _, s := range secrets {
					if strings.Contains(v, s) {
						t.Errorf("attempt %d: header %s: %q carries the auth secret %q", h.Attempt, name, v, s)
					}
				}
			}
		}
		for _, s := range secrets {
			if strings.Contains(h.Path+"?"+h.RawQuery, s) || strings.Contains(string(h.Body), s) {
				t.Errorf("attempt %d: URL or body carries the auth secret %q", h.Attempt, s)
			}
		}
	}
}

// TestAuthHeader: auth_header lets in a request whose header equals one of
// the values (the second one too: rotation), the upstream never gets the
// header, and a missing, wrong or repeated header gets 401 naming the
// header but no value.
func TestAuthHeader(t *testing.T) {
	t.Setenv(setVar, "hdr-s3cret-new")
	up := newUpstream(t, always(http.StatusOK))
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in %s/hook {
		name %s
		auth_header X-Webhook-Token hdr-s3cret-old {env.%s}
		auth_header Authorization "Bearer bearer-s3cret"
		forward_headers X-Trace
		store memory
	}`, up.URL, relayName(t), setVar)))

	for _, token := range []string{"hdr-s3cret-old", "hdr-s3cret-new"} {
		body := payload(t)
		mustAccept(t, relayURL("/in", ""), body, "X-Webhook-Token: "+token, "Authorization: Bearer bearer-s3cret", "X-Trace: t1")
		hits := up.waitDelivered(t, body)
		noneCarries(t, hits, "s3cret")
		for _, h := range hits {
			if h.Header.Get("X-Webhook-Token") != "" || h.Header.Get("Authorization") != "" {
				t.Errorf("the upstream got the auth headers: %v", h.Header)
			}
			if h.Header.Get("X-Trace") != "t1" {
				t.Errorf("X-Trace %q, want t1 (forward_headers)", h.Header.Get("X-Trace"))
			}
		}
	}

	for _, tc := range []struct {
		name   string
		header []string
		says   string
	}{
		{"missing", []string{"Authorization: Bearer bearer-s3cret"}, "missing or wrong X-Webhook-Token header"},
		{"wrong", []string{"X-Webhook-Token: hdr-s3cret-older", "Authorization: Bearer bearer-s3cret"}, "missing or wrong X-Webhook-Token header"},
		{"value of another field", []string{"X-Webhook-Token: bearer-s3cret", "Authorization: Bearer bearer-s3cret"}, "missing or wrong X-Webhook-Token header"},
		{"second header missing", []string{"X-Webhook-Token: hdr-s3cret-old"}, "missing or wrong Authorization header"},
		{"second header wrong", []string{"X-Webhook-Token: hdr-s3cret-old", "Authorization: bearer-s3cret"}, "missing or wrong Authorization header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := post(t, relayURL("/in", ""), payload(t), tc.header...)
			expectErrorBody(t, a, http.StatusUnauthorized, tc.says)
			if a.header.Get("WWW-Authenticate") != "" {
				t.Errorf("WWW-Authenticate %q on an auth_header refusal", a.header.Get("WWW-Authenticate"))
			}
		})
	}

	t.Run("repeated", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, relayURL("/in", ""), strings.NewReader(string(payload(t))))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer bearer-s3cret")
		req.Header.Add("X-Webhook-Token", "hdr-s3cret-old")
		req.Header.Add("X-Webhook-Token", "hdr-s3cret-new")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("status %d with the header twice, want 401", resp.StatusCode)
		}
	})
}

// TestAuthBasic: auth_basic lets in the configured user with any of its
// passwords; a missing, wrong or other user's credentials get 401 with
// WWW-Authenticate: Basic, and the upstream never gets Authorization. With
// auth_query too, both must pass.
func TestAuthBasic(t *testing.T) {
	t.Setenv(setVar, "basic-s3cret-new")
	up := newUpstream(t, always(http.StatusOK))
	startCaddy(t, site(fmt.Sprintf(`
	webhook_relay /in %s/hook {
		name %s
		auth_basic deepgram basic-s3cret-old {env.%s}
		auth_basic postmark pm-s3cret
		auth_query token tok-s3cret
		store memory
	}`, up.URL, relayName(t), setVar)))

	url := relayURL("/in", "token=tok-s3cret")
	for _, cred := range [][2]string{{"deepgram", "basic-s3cret-old"}, {"deepgram", "basic-s3cret-new"}, {"postmark", "pm-s3cret"}} {
		body := payload(t)
		mustAccept(t, url, body, basic(cred[0], cred[1]))
		hits := up.waitDelivered(t, body)
		noneCarries(t, hits, "s3cret", base64.StdEncoding.EncodeToString([]byte(cred[0]+":"+cred[1])))
		for _, h := range hits {
			if h.Header.Get("Authorization") != "" {
				t.Errorf("the upstream got Authorization %q", h.Header.Get("Authorization"))
			}
		}
	}

	for _, tc := range []struct {
		name   string
		header []string
	}{
		{"missing", nil},
		{"wrong password", []string{basic("deepgram", "basic-s3cret-older")}},
		{"another user's password", []string{basic("deepgram", "pm-s3cret")}},
		{"unknown user", []string{basic("nobody", "basic-s3cret-old")}},
		{"not Basic", []string{"Authorization: Bearer basic-s3cret-old"}},
		{"not base64", []string{"Authorization: Basic %%%"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := post(t, url, payload(t), tc.header...)
			expectErrorBody(t, a, http.StatusUnauthorized, "missing or wrong Basic credentials")
			if got := a.header.Get("WWW-Authenticate"); got != `Basic realm="webhook_relay"` {
				t.Errorf(`WWW-Authenticate %q, want Basic realm="webhook_relay"`, got)
			}
		})
	}
	t.Run("without auth_query", func(t *testing.T) {
		a := post(t, relayURL("/in", ""), payload(t), basic("deepgram", "basic-s3cret-old"))
		expectErrorBody(t, a, http.StatusUnauthorized, "missing or wrong auth query parameter")
	})
}

// TestConfigErrorAuthHeader: an auth_header value or auth_basic password
// that resolves to empty, or a header that would be stored, forwarded or
// keyed on, is a config error naming the field or user and never a value.
func TestConfigErrorAuthHeader(t *testing.T) {
	unsetEnv(t, unsetVar)
	for _, tc := range []struct{ name, lines, want string }{
		{"empty header value", fmt.Sprintf("auth_header X-Token lit-s3cret {env.%s}", unsetVar),
			fmt.Sprintf("auth_header X-Token: value #2 (placeholders {env.%s}) resolves to empty", unsetVar)},
		{"partly empty header value", fmt.Sprintf(`auth_header Authorization "Bearer {env.%s}"`, unsetVar),
			"auth_header Authorization: value #1"},
		{"empty password", fmt.Sprintf("auth_basic deepgram {env.%s}", unsetVar),
			fmt.Sprintf("auth_basic deepgram: password #1 (placeholders {env.%s}) resolves to empty", unsetVar)},
		{"empty user", fmt.Sprintf("auth_basic {env.%s} lit-s3cret", unsetVar), "auth_basic: user {env." + unsetVar + "}"},
		{"user with colon", "auth_basic a:b lit-s3cret", "auth_basic a:b: a user name may not contain ':'"},
		{"bad field", `auth_header "X Token" lit-s3cret`, `auth_header "X Token": not a valid header name`},
		{"relay's own field", `auth_header Content-Type lit-s3cret`, "auth_header Content-Type: a header the relay or the connection uses"},
		{"forwarded", "auth_header X-Token lit-s3cret\n\t\tforward_headers X-Trace x-token", "forward_headers x-token: it is an auth_header"},
		{"verify's header", "auth_header Stripe-Signature lit-s3cret\n\t\tverify stripe whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
			"auth_header Stripe-Signature: the verify scheme reads, stores and forwards this header"},
		{"keyed on", "auth_header X-Token lit-s3cret\n\t\tkey json.id header.x-token", "key header.x-token reads the auth_header X-Token"},
		{"with auth_basic", "auth_header Authorization lit-s3cret\n\t\tauth_basic u lit-s3cret", "auth_header Authorization with auth_basic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(t, site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		store memory
		%s
	}`, relayName(t), tc.lines)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "lit-s3cret") {
				t.Errorf("error shows the value: %v", err)
			}
		})
	}
	t.Run("admin load", func(t *testing.T) {
		startCaddy(t, site(""))
		msg := loadError(t, site(fmt.Sprintf(`
	webhook_relay /in http://127.0.0.1:9/hook {
		name %s
		auth_header X-Token {env.%s}
		store memory
	}`, relayName(t), unsetVar)))
		if !strings.Contains(msg, "auth_header X-Token: value #1") {
			t.Errorf("load error %q, want it to name auth_header X-Token", msg)
		}
	})
}
