package testkit

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"strings"
	"testing"
)

// ConsoleSecrets sets the secrets of the console tests' relay
// (CONSOLE_TEST_TOKEN, its auth_query token, and CONSOLE_TEST_APP_TOKEN,
// its header_up) for the test and returns them in that order.
func ConsoleSecrets(t testing.TB) []string {
	token := "tok-" + strings.Repeat("q7", 12)
	appToken := "app-" + strings.Repeat("z9", 12)
	t.Setenv("CONSOLE_TEST_TOKEN", token)
	t.Setenv("CONSOLE_TEST_APP_TOKEN", appToken)
	return []string{token, appToken}
}

// ConsoleDirectives are the console tests' site directives: a relay at /in
// called name, delivering to upstreamURL/hook (destination "upstream",
// whose filter takes every payload but those sent with the query parameter
// ignore, counted as ignored), and to upstreamURL/archive (destination
// "archive", taking only those sent with the query parameter archive),
// guarded by the token of
// ConsoleSecrets, with its app token as a secret header_up and answering
// Graph's validation (challenge graph, counted as challenge), and the
// console at /ops/, behind basic_auth for user with the bcrypt hash when
// hash is set, else with allow_anonymous.
func ConsoleDirectives(upstreamURL, name, user, hash string) string {
	auth := "webhook_relay_console {\n\t\t\tallow_anonymous\n\t\t}"
	if hash != "" {
		auth = fmt.Sprintf("basic_auth {\n\t\t\t%s %s\n\t\t}\n\t\twebhook_relay_console", user, hash)
	}
	return fmt.Sprintf(`
	webhook_relay /in {
		destination upstream %[1]s/hook {
			filter `+"`"+`!("ignore" in query)`+"`"+`
		}
		destination archive %[1]s/archive {
			filter `+"`"+`"archive" in query`+"`"+`
		}
		name %[2]s
		store memory
		backoff 10ms 50ms
		auth_query token {env.CONSOLE_TEST_TOKEN}
		header_up X-App-Token {env.CONSOLE_TEST_APP_TOKEN}
		challenge graph
	}
	handle_path /ops/* {
		%[3]s
	}
	redir /ops /ops/`, upstreamURL, name, auth)
}

// PNG is a small w×h picture with a gradient, encoded as PNG.
func PNG(t testing.TB, w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{R: uint8(40 + 200*x/w), G: uint8(90 + 120*y/h), B: 200, A: 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// RunwareResult is a Runware imageInference result (its data array) with
// extra fields ("name":value) after the task and image UUIDs.
func RunwareResult(task, image string, extra ...string) []byte {
	fields := append([]string{
		`"taskType":"imageInference"`,
		fmt.Sprintf(`"taskUUID":%q`, task),
		fmt.Sprintf(`"imageUUID":%q`, image),
	}, extra...)
	fields = append(fields, `"seed":4172364925`, `"cost":0.0013`)
	return []byte(`{"data":[{` + strings.Join(fields, ",") + `}]}`)
}
