package command

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// fakeAdmin answers the admin API's routes of relay "main" as canned.
func fakeAdmin(t *testing.T, overviewStatus int) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answer := func(status int, body string) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		}
		switch r.Method + " " + r.URL.Path {
		case "GET /webhook_relay/":
			answer(overviewStatus, `[{"name":"main","requests":{},"deliveries":{}}]`)
		case "GET /webhook_relay/main/dead/broken", "DELETE /webhook_relay/main/dead/broken":
			answer(500, `{"error":"boom"}`)
		case "DELETE /webhook_relay/main/dead/forbidden":
			answer(403, `{"error":"host not allowed"}`)
		case "GET /webhook_relay/main/dead/gone", "DELETE /webhook_relay/main/dead/gone":
			answer(404, `{"error":"no dead letter with id \"gone\""}`)
		default:
			answer(404, `{"error":"unknown route"}`)
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func flags(t *testing.T, address string, args ...string) caddycmd.Flags {
	t.Helper()
	fs := (&cobra.Command{Use: "webhook-relay"}).Flags()
	fs.String("address", address, "")
	fs.String("config", "", "")
	fs.String("adapter", "", "")
	fs.Bool("json", false, "")
	fs.Bool("body", false, "")
	fs.Bool("all", false, "")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return caddycmd.Flags{FlagSet: fs}
}

// TestErrorsAreReportedAsWhatTheyAre: only a 404 of a dead letter's route
// means the dead letter is missing; any other error status is reported as
// itself.
func TestErrorsAreReportedAsWhatTheyAre(t *testing.T) {
	addr := fakeAdmin(t, 200)
	for _, c := range []struct {
		name    string
		run     func(caddycmd.Flags) (int, error)
		args    []string
		want    string
		notWant string
	}{
		{"show, 500", cmdDead, []string{"main", "show", "broken"}, "HTTP 500: boom", "has no dead letter"},
		{"delete, 500", cmdDelete, []string{"main", "broken"}, "HTTP 500: boom", "no dead letter"},
		{"delete, 403", cmdDelete, []string{"main", "forbidden"}, "HTTP 403: host not allowed", "no dead letter"},
		{"show, 404", cmdDead, []string{"main", "show", "gone"}, `relay main has no dead letter "gone"`, "HTTP"},
		{"delete, 404", cmdDelete, []string{"main", "gone"}, `relay main has no dead letter "gone"`, "HTTP"},
		{"unknown relay", cmdDelete, []string{"other", "1"}, `no relay named "other"`, "HTTP"},
	} {
		code, err := c.run(flags(t, addr, c.args...))
		if code != exitError || err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), c.notWant) {
			t.Errorf("%s: exit %d, %v; want %d saying %q, not %q", c.name, code, err, exitError, c.want, c.notWant)
		}
	}
}

func TestOverviewErrors(t *testing.T) {
	code, err := cmdRelayStatus(flags(t, fakeAdmin(t, 500)))
	if code != exitError || err == nil || !strings.Contains(err.Error(), "HTTP 500") {
		t.Errorf("status with a 500: exit %d, %v", code, err)
	}
	code, err = cmdRelayStatus(flags(t, fakeAdmin(t, 404)))
	if code != exitError || err == nil || !strings.Contains(err.Error(), "no webhook_relay admin API") {
		t.Errorf("status with the route missing: exit %d, %v", code, err)
	}
}
