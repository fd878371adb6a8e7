package caddytest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"

	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"
)

var consoleScreenshots = flag.String("console.screenshots", "",
	"directory to write the console's screenshots to (console.png, console-letter.png), e.g. ../docs")

// consoleUser and consolePassword guard the console in the tests, as the
// README tells users to.
const consoleUser, consolePassword = "ops", "correct horse battery staple"

// consoleApp is the application behind the relay in the console tests.
// Until fixed, it refuses results carrying inline images (422) and error
// results (400), and takes everything else; once fixed it takes all.
type consoleApp struct {
	fixed atomic.Bool
	*upstream
}

func newConsoleApp(t *testing.T) *consoleApp {
	app := &consoleApp{}
	app.upstream = newUpstream(t, func(h *hit) reply {
		switch {
		case app.fixed.Load():
			return reply{status: http.StatusOK}
		case bytes.Contains(h.Body, []byte(`"imageBase64Data"`)), bytes.Contains(h.Body, []byte(`"imageDataURI"`)):
			return reply{status: http.StatusUnprocessableEntity}
		case bytes.Contains(h.Body, []byte(`"errors"`)):
			return reply{status: http.StatusBadRequest}
		}
		return reply{status: http.StatusOK}
	})
	return app
}

// consoleConfig is a relay at /in guarded by a token, with a secret
// header_up, and the console at /ops/ behind basic_auth (when hash is
// set).
func consoleConfig(t *testing.T, upstreamURL, hash string) string {
	auth := ""
	if hash != "" {
		auth = fmt.Sprintf("basic_auth {\n\t\t\t%s %s\n\t\t}", consoleUser, hash)
	}
	return site(fmt.Sprintf(`
	webhook_relay /in {
		upstream %s/hook
		name %s
		store memory
		backoff 10ms 50ms
		auth_query token {env.CONSOLE_TEST_TOKEN}
		header_up X-App-Token {env.CONSOLE_TEST_APP_TOKEN}
	}
	handle_path /ops/* {
		%s
		webhook_relay_console
	}
	redir /ops /ops/`, upstreamURL, relayName(t), auth))
}

// consoleSecrets sets the relay's secrets and returns them.
func consoleSecrets(t *testing.T) []string {
	token := "tok-" + strings.Repeat("q7", 12)
	appToken := "app-" + strings.Repeat("z9", 12)
	t.Setenv("CONSOLE_TEST_TOKEN", token)
	t.Setenv("CONSOLE_TEST_APP_TOKEN", appToken)
	return []string{token, appToken}
}

// testPNG is a small picture with a gradient, encoded as PNG.
func testPNG(t *testing.T, w, h int) []byte {
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

// runwareResult is a Runware imageInference result with extra fields.
func runwareResult(task, image string, extra ...string) []byte {
	fields := append([]string{
		`"taskType":"imageInference"`,
		fmt.Sprintf(`"taskUUID":%q`, task),
		fmt.Sprintf(`"imageUUID":%q`, image),
	}, extra...)
	fields = append(fields, `"seed":4172364925`, `"cost":0.0013`)
	return []byte(`{"data":[{` + strings.Join(fields, ",") + `}]}`)
}

// TestConsoleInBrowser opens the console in headless Chromium: dead letters
// from an application that refuses some results appear with their status,
// can be filtered and sorted, one opens with its headers, body and image
// thumbnail, and once the application is fixed, replaying from the page
// drains them; deleting needs a confirmation and removes for good.
func TestConsoleInBrowser(t *testing.T) {
	secrets := consoleSecrets(t)
	app := newConsoleApp(t)
	name := relayName(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(consolePassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	startCaddy(t, consoleConfig(t, app.URL, string(hash)))
	in := relayURL("/in", "token="+secrets[0]+"&source=runware")

	pic := testPNG(t, 160, 112)
	picB64 := base64.StdEncoding.EncodeToString(pic)
	// ids of this run's own: the relay's dedupe state outlives a test
	// (go test -count=2)
	run := payloadSeq.Add(1)
	uuid := func(prefix string, n int64) string { return fmt.Sprintf("%s-%012x", prefix, run*16+n) }
	imageUUID := uuid("b7f4c2d8-6a0e-4b1f-8c3d", 2)
	withBase64 := runwareResult(uuid("5e9a3b0c-1f2d-4c39-9a57", 1), imageUUID,
		`"imageBase64Data":"`+picB64+`"`)
	withDataURI := runwareResult(uuid("0c3d9f1e-7b2a-4e58-b6c1", 3), uuid("e2a81f5c-3d7b-4c9e-a016", 4),
		`"imageDataURI":"data:image/png;base64,`+picB64+`"`)
	refusedError := []byte(`{"errors":[{"code":"invalidPositivePrompt","message":"Invalid value for positivePrompt parameter.",` +
		`"parameter":"positivePrompt","taskType":"imageInference","taskUUID":"` + uuid("9d4b7e2a-5c1f-4a83-b0e6", 5) + `"}]}`)
	fine := runwareResult(uuid("a1b2c3d4-0000-4e5f-8a9b", 6), uuid("f0e1d2c3-1111-4b5a-9c8d", 7),
		`"imageURL":"https://im.runware.ai/image/ws/0.5/ii/f0e1d2c3.jpg"`)
	for _, b := range [][]byte{withBase64, withDataURI, refusedError, fine} {
		mustAccept(t, in, b, "User-Agent: Runware-Webhooks/1.0")
	}
	app.waitDelivered(t, fine)
	opsWaitOverview(t, name, "3 dead letters", func(s *opsRelayStatus) bool {
		return intOf(s.DeadLetters) == 3 && intOf(s.Backlog) == 0
	})
	ids := map[string]string{} // "base64", "datauri", "error" -> id
	for _, e := range opsListDead(t, name, "").Entries {
		d, _ := opsGetDead(t, name, e.ID)
		switch body := []byte(ptrString(d.Body)); {
		case bytes.Equal(body, withBase64):
			ids["base64"] = e.ID
		case bytes.Equal(body, withDataURI):
			ids["datauri"] = e.ID
		case bytes.Equal(body, refusedError):
			ids["error"] = e.ID
		}
	}
	if len(ids) != 3 {
		t.Fatalf("dead letters by body: %v, want the three refused payloads", ids)
	}

	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(consoleUser+":"+consolePassword))
	b := openBrowser(t, map[string]string{"Authorization": auth})
	consoleURL := relayURL("/ops/", "")
	row := `document.querySelector('tr[data-relay=` + js(name) + `]')`
	cell := func(class string) string { return row + `?.querySelector('td.` + class + `')?.textContent` }
	deadRows := `[...document.querySelectorAll('#dead tbody tr')]`

	b.do("opening the console", chromedp.Navigate(consoleURL))
	b.waitFor("the relay with 3 dead letters", cell("dead")+` === '3' && `+cell("backlog")+` === '0'`)
	if got := eval[string](b, cell("upstream")); got != app.Addr {
		t.Errorf("upstream shown %q, want the host %q", got, app.Addr)
	}

	// traffic while the page is open: the rates come from the refreshes
	for _, b := range [][]byte{payload(t), payload(t)} {
		mustAccept(t, in, b)
		expectStatus(t, post(t, in, b), http.StatusOK, "duplicate")
	}
	expectStatus(t, post(t, relayURL("/in", "token=wrong"), payload(t)), http.StatusUnauthorized, "")
	for _, class := range []string{"rate-accepted", "rate-duplicate", "rate-unauthorized"} {
		b.waitFor("a rate in "+class+" refreshed without a reload", `/^[0-9.]+\/s$/.test(`+cell(class)+`) && `+cell(class)+` !== '0/s'`)
	}
	if n := eval[int](b, `performance.getEntriesByType('navigation').length`); n != 1 {
		t.Errorf("%d navigations, want the one page load", n)
	}

	t.Run("dead letters", func(t *testing.T) {
		b.do("choosing the relay", chromedp.Click(chromedp.CSS(`tr[data-relay=`+js(name)+`] td.name a`)))
		b.waitFor("3 dead letters listed", deadRows+`.length === 3`)
		statuses := eval[[]string](b, deadRows+`.map(r => r.querySelector('td.status').textContent).sort()`)
		if strings.Join(statuses, ",") != "400,422,422" {
			t.Errorf("statuses shown %v, want 400, 422, 422", statuses)
		}
		for which, id := range ids {
			r := `document.querySelector('#dead tr[data-id=` + js(id) + `]')`
			if got := eval[string](b, r+`?.querySelector('td.attempts')?.textContent`); got != "1" {
				t.Errorf("%s: attempts %q, want 1", which, got)
			}
			status := eval[string](b, r+`?.querySelector('td.status')?.textContent`)
			if got := eval[string](b, r+`?.querySelector('td.error')?.textContent`); status == "" || !strings.Contains(got, "answered "+status) {
				t.Errorf("%s: last error %q does not say the status %q", which, got, status)
			}
		}

		// sorting by status, both ways
		b.do("sorting by status", chromedp.Click(chromedp.CSS(`button.sort[data-sort=status]`)))
		b.waitFor("the 422s first", deadRows+`[0]?.querySelector('td.status').textContent === '422'`)
		b.do("sorting by status upwards", chromedp.Click(chromedp.CSS(`button.sort[data-sort=status]`)))
		b.waitFor("the 400 first", deadRows+`[0]?.dataset.id === `+js(ids["error"]))

		// filtering by status, then by key
		b.do("filtering on 400", chromedp.SetValue(chromedp.ID("filter-status"), "400"),
			chromedp.Evaluate[chromedp.Void](`document.getElementById('filter-status').dispatchEvent(new Event('change'))`))
		b.waitFor("only the 400", deadRows+`.length === 1 && `+deadRows+`[0].dataset.id === `+js(ids["error"]))
		b.do("any status again", chromedp.SetValue(chromedp.ID("filter-status"), ""),
			chromedp.Evaluate[chromedp.Void](`document.getElementById('filter-status').dispatchEvent(new Event('change'))`))
		b.waitFor("all 3 again", deadRows+`.length === 3`)
		b.do("typing a key", chromedp.SendKeys(chromedp.ID("filter-key"), "e2a81f5c-3d7b"))
		b.waitFor("only the data URI result", deadRows+`.length === 1 && `+deadRows+`[0].dataset.id === `+js(ids["datauri"]))
		if got := eval[string](b, `document.getElementById('dead-summary').textContent`); got != "1 of 3 dead letters shown" {
			t.Errorf("summary %q", got)
		}
		b.do("clearing the key", chromedp.Evaluate[chromedp.Void](
			`(e => { e.value = ''; e.dispatchEvent(new Event('input')); })(document.getElementById('filter-key'))`))
		b.waitFor("all 3 again", deadRows+`.length === 3`)

		shot := b.screenshot(t, "console.png")
		if !bytes.HasPrefix(shot, []byte("\x89PNG")) {
			t.Errorf("the screenshot is not a PNG")
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("one dead letter", func(t *testing.T) {
		b.do("opening the base64 result", chromedp.Click(chromedp.CSS(`#dead tr[data-id=`+js(ids["base64"])+`] td.id a`)))
		b.waitFor("the letter", `!document.getElementById('letter-section').hidden && document.querySelector('#letter-fields dd')`)
		b.waitFor("its thumbnail, decoded", `(i => i && i.complete && i.naturalWidth === 160 && i.naturalHeight === 112)(document.querySelector('#thumbs img'))`)
		if n := eval[int](b, `document.querySelectorAll('#thumbs img').length`); n != 1 {
			t.Errorf("%d thumbnails, want 1", n)
		}
		if got := eval[string](b, `document.querySelector('#thumbs figcaption').textContent`); !strings.Contains(got, "data[0].imageBase64Data") {
			t.Errorf("thumbnail caption %q does not name the field", got)
		}
		body := eval[string](b, `document.getElementById('letter-body').textContent`)
		for _, want := range []string{`"taskType": "imageInference"`, `"imageUUID": "` + imageUUID + `"`, "image 1 above"} {
			if !strings.Contains(body, want) {
				t.Errorf("body shown does not contain %s:\n%s", want, body)
			}
		}
		if strings.Contains(body, picB64) {
			t.Errorf("the pretty-printed body holds the whole base64 image; it should be cut")
		}
		fields := eval[map[string]string](b, `Object.fromEntries([...document.querySelectorAll('#letter-fields dt, #letter-request dt')].map(dt => [dt.textContent, dt.nextElementSibling.textContent]))`)
		for k, want := range map[string]string{
			"Attempts": "1", "Last status": "422", "Content-Type": "application/json",
			"User-Agent": "Runware-Webhooks/1.0", "Query": "?source=runware", "Body size": sizeText(len(withBase64)),
		} {
			if fields[k] != want {
				t.Errorf("%s shown %q, want %q", k, fields[k], want)
			}
		}
		if !strings.Contains(fields["Last error"], "422") || !strings.HasPrefix(fields["X-Forwarded-For"], "127.0.0.1") {
			t.Errorf("last error %q, X-Forwarded-For %q", fields["Last error"], fields["X-Forwarded-For"])
		}
		b.do("opening the raw body", chromedp.Click(chromedp.CSS(`#letter-raw summary`)))
		b.waitFor("the raw body", `document.querySelector('#letter-raw pre').textContent === `+js(string(withBase64)))
		b.screenshot(t, "console-letter.png")

		b.do("opening the data URI result", chromedp.Navigate(consoleURL+"#relay="+url.QueryEscape(name)+"&id="+url.QueryEscape(ids["datauri"])))
		b.waitFor("its thumbnail, decoded", `(i => i && i.complete && i.naturalWidth === 160)(document.querySelector('#thumbs img'))`)
		if got := eval[string](b, `document.querySelector('#thumbs figcaption').textContent`); !strings.Contains(got, "data[0].imageDataURI") {
			t.Errorf("thumbnail caption %q does not name the field", got)
		}

		b.do("opening the error result", chromedp.Navigate(consoleURL+"#relay="+url.QueryEscape(name)+"&id="+url.QueryEscape(ids["error"])))
		b.waitFor("its body", `document.getElementById('letter-body').textContent.includes('"code": "invalidPositivePrompt"')`)
		if n := eval[int](b, `document.querySelectorAll('#thumbs img').length`); n != 0 || !eval[bool](b, `document.getElementById('letter-images').hidden`) {
			t.Errorf("an error result shows %d thumbnails", n)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("no secret shown", func(t *testing.T) {
		html := eval[string](b, `document.documentElement.outerHTML`)
		var answers []string
		for _, path := range []string{"api/relays", "api/dead?relay=" + name,
			"api/letter?relay=" + name + "&id=" + ids["base64"], "api/letter?relay=" + name + "&id=" + ids["error"]} {
			a, err := send(http.MethodGet, consoleURL+path, nil, "Authorization: "+auth)
			if err != nil || a.status != http.StatusOK {
				t.Fatalf("GET %s: %v %d %s", path, err, a.status, a.body)
			}
			answers = append(answers, a.body)
		}
		for _, s := range append(secrets, consolePassword) {
			if strings.Contains(html, s) {
				t.Errorf("the page shows the secret %q", s)
			}
			for i, a := range answers {
				if strings.Contains(a, s) {
					t.Errorf("answer %d of the console's JSON holds the secret %q", i, s)
				}
			}
		}
	})

	t.Run("cancel does nothing", func(t *testing.T) {
		b.do("back to the list", chromedp.Navigate(consoleURL+"#relay="+url.QueryEscape(name)))
		b.waitFor("3 dead letters listed", deadRows+`.length === 3`)
		b.do("asking to delete all", chromedp.Click(chromedp.ID("delete-all")))
		b.waitFor("the confirmation", `document.getElementById('confirm').open && document.getElementById('confirm-text').textContent.includes('Delete all 3 dead letters')`)
		b.do("cancelling", chromedp.Click(chromedp.ID("confirm-cancel")))
		b.waitFor("the confirmation closed", `!document.getElementById('confirm').open`)
		// the next refresh of the list, after the cancel, still has 3
		before := len(b.requestsMade())
		b.waitForRequest("a refresh of the list", before, "GET "+consoleURL+"api/dead?")
		b.waitFor("3 dead letters still", deadRows+`.length === 3`)
		for _, r := range b.requestsMade()[before:] {
			if strings.HasPrefix(r, "POST ") {
				t.Errorf("the cancelled delete sent %s", r)
			}
		}
		if s := opsOverview(t, name); intOf(s.DeadLetters) != 3 {
			t.Errorf("%d dead letters after a cancelled delete, want 3", intOf(s.DeadLetters))
		}
	})

	app.fixed.Store(true)
	t.Run("replay one", func(t *testing.T) {
		id := ids["base64"]
		b.do("opening it", chromedp.Click(chromedp.CSS(`#dead tr[data-id=`+js(id)+`] td.id a`)))
		b.waitFor("the letter", `document.querySelector('#letter-fields dd')`)
		b.do("replaying it", chromedp.Click(chromedp.ID("letter-replay")))
		b.waitFor("the confirmation", `document.getElementById('confirm').open && document.getElementById('confirm-text').textContent.includes(`+js("Replay dead letter "+id)+`)`)
		b.do("confirming", chromedp.Click(chromedp.ID("confirm-ok")))
		app.waitDelivered(t, withBase64)
		b.waitFor("the notice", `document.getElementById('notice').textContent === `+js("Replayed 1 dead letter of "+name+"."))
		b.waitFor("back to the list, without it", `!document.getElementById('dead-section').hidden && `+deadRows+`.length === 2 && !document.querySelector('#dead tr[data-id=`+js(id)+`]')`)
		b.waitFor("the backlog drained and 2 dead letters left", cell("dead")+` === '2' && `+cell("backlog")+` === '0'`)
	})

	t.Run("replay selected", func(t *testing.T) {
		id := ids["datauri"]
		b.do("selecting it", chromedp.Click(chromedp.CSS(`#dead tr[data-id=`+js(id)+`] input[type=checkbox]`)))
		b.waitFor("the button counting it", `document.getElementById('replay-selected').textContent === 'Replay selected (1)'`)
		b.do("replaying the selected", chromedp.Click(chromedp.ID("replay-selected")))
		b.waitFor("the confirmation", `document.getElementById('confirm').open`)
		b.do("confirming", chromedp.Click(chromedp.ID("confirm-ok")))
		app.waitDelivered(t, withDataURI)
		b.waitFor("only the error result left", deadRows+`.length === 1 && `+deadRows+`[0].dataset.id === `+js(ids["error"]))
		b.waitFor("1 dead letter left", cell("dead")+` === '1' && `+cell("backlog")+` === '0'`)
	})

	t.Run("delete all", func(t *testing.T) {
		b.do("deleting all", chromedp.Click(chromedp.ID("delete-all")))
		b.waitFor("the confirmation", `document.getElementById('confirm').open && document.getElementById('confirm-text').textContent.includes('cannot be brought back')`)
		b.do("confirming", chromedp.Click(chromedp.ID("confirm-ok")))
		b.waitFor("no dead letters", deadRows+`.length === 0 && `+cell("dead")+` === '0'`)
		if got := eval[string](b, `document.getElementById('notice').textContent`); got != "Deleted 1 dead letter of "+name+"." {
			t.Errorf("notice %q", got)
		}
		if s := opsOverview(t, name); intOf(s.DeadLetters) != 0 || intOf(s.Backlog) != 0 {
			t.Errorf("after deleting all: %d dead letters, backlog %d", intOf(s.DeadLetters), intOf(s.Backlog))
		}
		barrier(t, app.upstream, in)
		if n := len(withBody(app.all(), refusedError)); n != 1 {
			t.Errorf("the deleted dead letter reached the application %d times, want only its first attempt", n)
		}
	})

	t.Run("only its own origin", func(t *testing.T) {
		origin := relayURL("", "")
		for _, r := range b.requestsMade() {
			_, u, _ := strings.Cut(r, " ")
			if !strings.HasPrefix(u, origin+"/ops/") && !strings.HasPrefix(u, "data:image/") {
				t.Errorf("the page loaded %s: it may load nothing but its own files and JSON", r)
			}
		}
		for _, p := range b.problems() {
			t.Errorf("the page logged %s", p)
		}
	})
}

// sizeText is a size as the page writes it.
func sizeText(n int) string {
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%.1f KiB", float64(n)/1024)
}

// screenshot takes a PNG of the whole page, written to the
// -console.screenshots directory when one is given.
func (b *browser) screenshot(t *testing.T, name string) []byte {
	t.Helper()
	b.do("leaving the fields", chromedp.Evaluate[chromedp.Void](`document.activeElement && document.activeElement.blur()`))
	b.do("waiting for the fonts", chromedp.Evaluate[chromedp.Void](`document.fonts.ready.then(() => true)`, chromedp.EvalAwaitPromise))
	ctx, cancel := context.WithTimeout(b.ctx, waitTimeout)
	defer cancel()
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := *consoleScreenshots
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.WriteFile(filepath.Join(dir, name), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	return shot
}

// consoleCall makes one request to the console (mounted at /ops/, no
// basic_auth) with header lines "Name: value".
func consoleCall(t *testing.T, method, path, body string, header ...string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	a, err := send(method, relayURL("/ops/"+path, ""), rd, header...)
	if err != nil {
		t.Fatalf("%s /ops/%s: %v", method, path, err)
	}
	return a
}

// consoleError checks that a console answer is a JSON error with status.
func consoleError(t *testing.T, what string, a answer, status int, says string) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if a.status != status || json.Unmarshal([]byte(a.body), &e) != nil || !strings.Contains(e.Error, says) {
		t.Errorf("%s: status %d, body %q; want %d and a JSON error saying %q", what, a.status, a.body, status, says)
	}
}

// TestConsoleRefusesCrossSiteWrites: a replay or delete that a browser
// sends from another site, or as a plain form, does nothing; the same from
// the console's own origin, or from a client that is no browser, works.
func TestConsoleRefusesCrossSiteWrites(t *testing.T) {
	consoleSecrets(t)
	app := newConsoleApp(t)
	name := relayName(t)
	startCaddy(t, consoleConfig(t, app.URL, ""))
	in := relayURL("/in", "token="+os.Getenv("CONSOLE_TEST_TOKEN"))
	refused := fmt.Appendf(nil, `{"errors":[{"code":"x","taskUUID":"%s-%d"}]}`, name, payloadSeq.Add(1))
	mustAccept(t, in, refused)
	opsWaitOverview(t, name, "1 dead letter", func(s *opsRelayStatus) bool { return intOf(s.DeadLetters) == 1 })
	id := opsListDead(t, name, "").Entries[0].ID
	all := fmt.Sprintf(`{"relay":%q,"all":true}`, name)
	one := fmt.Sprintf(`{"relay":%q,"ids":[%q]}`, name, id)
	host := fmt.Sprintf("127.0.0.1:%d", relayPort)

	for _, c := range []struct {
		what   string
		body   string
		header []string
		status int
		says   string
	}{
		{"from another site", all, []string{"Origin: https://evil.example", "Sec-Fetch-Site: cross-site"}, 403, "refused"},
		{"from a sibling site", all, []string{"Origin: http://other." + host, "Sec-Fetch-Site: same-site"}, 403, "refused"},
		{"another origin, older browser", one, []string{"Origin: http://127.0.0.2:9480"}, 403, "refused"},
		{"a plain form post", all, []string{"Content-Type: application/x-www-form-urlencoded"}, 415, "application/json"},
		{"text/plain", all, []string{"Content-Type: text/plain"}, 415, "application/json"},
		{"neither ids nor all", fmt.Sprintf(`{"relay":%q}`, name), nil, 400, `"all": true`},
		{"ids and all", fmt.Sprintf(`{"relay":%q,"ids":[],"all":true}`, name), nil, 400, "not both"},
		{"unknown field", fmt.Sprintf(`{"relay":%q,"all":true,"everything":1}`, name), nil, 400, "want"},
		{"not JSON", `ids=1`, nil, 400, "want"},
		{"unknown relay", `{"relay":"no-such-relay","all":true}`, nil, 404, `no relay named "no-such-relay"`},
	} {
		for _, verb := range []string{"replay", "delete"} {
			consoleError(t, verb+" "+c.what, consoleCall(t, http.MethodPost, "api/"+verb, c.body, c.header...), c.status, c.says)
		}
	}
	for _, verb := range []string{"replay", "delete"} {
		a := consoleCall(t, http.MethodGet, "api/"+verb, "")
		consoleError(t, "GET api/"+verb, a, 405, "POST")
		if a.header.Get("Allow") != http.MethodPost {
			t.Errorf("GET api/%s: Allow %q", verb, a.header.Get("Allow"))
		}
	}
	if s := opsOverview(t, name); intOf(s.DeadLetters) != 1 {
		t.Fatalf("%d dead letters after refused requests, want 1", intOf(s.DeadLetters))
	}
	if n := len(withBody(app.all(), refused)); n != 1 {
		t.Fatalf("a refused replay reached the application: %d requests", n)
	}

	// the console's own origin, as its page sends it
	app.fixed.Store(true)
	a := consoleCall(t, http.MethodPost, "api/replay", one, "Origin: http://"+host, "Sec-Fetch-Site: same-origin")
	if a.status != 200 || strings.TrimSpace(a.body) != `{"replayed":1}` {
		t.Fatalf("same-origin replay: %d %s", a.status, a.body)
	}
	app.waitDelivered(t, refused)
	// no browser at all (curl): nothing left to replay or delete
	for _, c := range []struct{ verb, want string }{{"replay", `{"replayed":0}`}, {"delete", `{"deleted":0}`}} {
		a := consoleCall(t, http.MethodPost, "api/"+c.verb, one)
		if a.status != 200 || strings.TrimSpace(a.body) != c.want {
			t.Errorf("%s of a dead letter already replayed: %d %s, want %s", c.verb, a.status, a.body, c.want)
		}
	}
}

// TestConsolePaths: the page, its files and its JSON at any mount point,
// with headers that keep it to itself.
func TestConsolePaths(t *testing.T) {
	consoleSecrets(t)
	app := newConsoleApp(t)
	name := relayName(t)
	startCaddy(t, consoleConfig(t, app.URL, ""))

	page := consoleCall(t, http.MethodGet, "", "")
	if page.status != 200 || !strings.HasPrefix(page.header.Get("Content-Type"), "text/html") || !strings.Contains(page.body, `<script src="console.js"`) {
		t.Fatalf("GET /ops/: %d %q %.200s", page.status, page.header.Get("Content-Type"), page.body)
	}
	csp := page.header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "img-src 'self' data:"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %s", csp, want)
		}
	}
	if page.header.Get("X-Frame-Options") != "DENY" || page.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("page headers %v", page.header)
	}
	for _, c := range []struct{ path, contentType string }{{"console.js", "text/javascript"}, {"console.css", "text/css"}} {
		a := consoleCall(t, http.MethodGet, c.path, "")
		if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), c.contentType) || len(a.body) < 500 {
			t.Errorf("GET %s: %d %q, %d bytes", c.path, a.status, a.header.Get("Content-Type"), len(a.body))
		}
		etag := a.header.Get("ETag")
		if again := consoleCall(t, http.MethodGet, c.path, "", "If-None-Match: "+etag); etag == "" || again.status != http.StatusNotModified {
			t.Errorf("GET %s with If-None-Match %q: %d, want 304", c.path, etag, again.status)
		}
		if strings.Contains(a.body, "http://") || strings.Contains(a.body, "https://") || strings.Contains(a.body, "@import") {
			t.Errorf("%s names another address: the console loads nothing from elsewhere", c.path)
		}
	}
	var relays struct {
		Now    string           `json:"now"`
		Relays []opsRelayStatus `json:"relays"`
	}
	a := consoleCall(t, http.MethodGet, "api/relays", "")
	if a.status != 200 || json.Unmarshal([]byte(a.body), &relays) != nil || relays.Now == "" || a.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET api/relays: %d %q %s", a.status, a.header.Get("Cache-Control"), a.body)
	}
	found := false
	for _, r := range relays.Relays {
		found = found || r.Name == name
	}
	if !found {
		t.Errorf("api/relays does not list %s: %s", name, a.body)
	}

	consoleError(t, "unknown relay", consoleCall(t, http.MethodGet, "api/dead?relay=nope", ""), 404, `no relay named "nope"`)
	consoleError(t, "unknown id", consoleCall(t, http.MethodGet, "api/letter?relay="+name+"&id=00000000000000000999", ""), 404, "no dead letter")
	consoleError(t, "bad limit", consoleCall(t, http.MethodGet, "api/dead?relay="+name+"&limit=1001", ""), 400, "limit")
	consoleError(t, "unknown endpoint", consoleCall(t, http.MethodGet, "api/config", ""), 404, "no api/config")
	consoleError(t, "POST a read", consoleCall(t, http.MethodPost, "api/relays", "{}", "Content-Type: application/json"), 405, "GET")
	if a := consoleCall(t, http.MethodGet, "favicon.ico", ""); a.status != 404 {
		t.Errorf("GET favicon.ico: %d, want 404", a.status)
	}
	if a := consoleCall(t, http.MethodPost, "", "x", "Content-Type: text/plain"); a.status != 405 {
		t.Errorf("POST the page: %d, want 405", a.status)
	}

	// mounted without a trailing slash, the page's address gets one, so
	// that its relative links resolve under the mount
	noFollow := &http.Client{Transport: client.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(relayURL("/ops/sub", "x=1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/ops/sub/?x=1" {
		t.Errorf("GET /ops/sub: %d to %q, want 301 to /ops/sub/?x=1 (the address the browser sees)", resp.StatusCode, resp.Header.Get("Location"))
	}
	// mounted at /console*, /console itself is stripped to nothing: it
	// gets its slash, then the page
	startCaddy(t, site("\thandle_path /console* {\n\t\twebhook_relay_console\n\t}"))
	resp, err = noFollow.Get(relayURL("/console", ""))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/console/" {
		t.Errorf("GET /console: %d to %q, want 301 to /console/", resp.StatusCode, resp.Header.Get("Location"))
	}
	if a, err := send(http.MethodGet, relayURL("/console/", ""), nil); err != nil || a.status != 200 || !strings.Contains(a.body, "console.js") {
		t.Errorf("GET /console/: %v %d", err, a.status)
	}
}

// TestConsoleCaddyfile: the directive takes nothing, and needs no order.
func TestConsoleCaddyfile(t *testing.T) {
	for _, c := range []struct{ directive, says string }{
		{"webhook_relay_console extra", "wrong argument count"},
		{"webhook_relay_console {\n\t\tpath /x\n\t}", "takes no block"},
	} {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8080 {\n\t"+c.directive+"\n}\n"), nil)
		if err == nil || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "Caddyfile:") {
			t.Errorf("%q: error %v, want one saying %q and where", c.directive, err, c.says)
		}
	}
	// a matcher, and no route needed: ordered before respond like webhook_relay
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8080 {\n\trespond 404\n\twebhook_relay_console /ops/*\n}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if i, j := bytes.Index(out, []byte(`"webhook_relay_console"`)), bytes.Index(out, []byte(`"static_response"`)); i < 0 || j < 0 || i > j {
		t.Errorf("webhook_relay_console is not ordered before respond:\n%s", out)
	}
}
