package browsertest

import (
	"bytes"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

var consoleScreenshots = flag.String("console.screenshots", "",
	"directory to write the console's screenshots to (console.png, console-letter.png, console-events.png, console-event.png), e.g. ../docs")

// consoleUser and consolePassword guard the console in the test, as the
// README tells users to.
const consoleUser, consolePassword = "ops", "correct horse battery staple"

// consoleApp is the application behind the relay. Until fixed, it refuses
// results carrying inline images (422) and error results (400), and takes
// everything else; once fixed it takes all.
type consoleApp struct {
	fixed atomic.Bool
	*testkit.Upstream
}

func newConsoleApp(t *testing.T) *consoleApp {
	app := &consoleApp{}
	app.Upstream = testkit.NewUpstream(t, func(r *testkit.Request) testkit.Answer {
		switch {
		case app.fixed.Load():
			return testkit.Answer{Status: http.StatusOK}
		case bytes.Contains(r.Body, []byte(`"imageBase64Data"`)), bytes.Contains(r.Body, []byte(`"imageDataURI"`)):
			return testkit.Answer{Status: http.StatusUnprocessableEntity}
		case bytes.Contains(r.Body, []byte(`"errors"`)):
			return testkit.Answer{Status: http.StatusBadRequest}
		}
		return testkit.Answer{Status: http.StatusOK}
	})
	return app
}

// consoleConfig is the console test's site (testkit.ConsoleDirectives),
// the console behind basic_auth.
func consoleConfig(t *testing.T, upstreamURL, hash string) string {
	return site(testkit.ConsoleDirectives(upstreamURL, relayName(t), consoleUser, hash))
}

// TestConsoleInBrowser opens the console in headless Chromium: dead letters
// from an application that refuses some results appear with their status,
// can be filtered and sorted, one opens with its headers, body and image
// thumbnail, and once the application is fixed, replaying from the page
// drains them; deleting needs a confirmation and removes for good.
func TestConsoleInBrowser(t *testing.T) {
	secrets := testkit.ConsoleSecrets(t)
	app := newConsoleApp(t)
	name := relayName(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(consolePassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	startCaddy(t, consoleConfig(t, app.URL, string(hash)))
	in := relayURL("/in", "token="+secrets[0]+"&source=runware")

	pic := testkit.PNG(t, 160, 112)
	picB64 := base64.StdEncoding.EncodeToString(pic)
	// ids of this run's own: the relay's dedupe state outlives a test
	// (go test -count=2)
	run := payloadSeq.Add(1)
	uuid := func(prefix string, n int64) string { return fmt.Sprintf("%s-%012x", prefix, run*16+n) }
	imageUUID := uuid("b7f4c2d8-6a0e-4b1f-8c3d", 2)
	withBase64 := testkit.RunwareResult(uuid("5e9a3b0c-1f2d-4c39-9a57", 1), imageUUID,
		`"imageBase64Data":"`+picB64+`"`)
	withDataURI := testkit.RunwareResult(uuid("0c3d9f1e-7b2a-4e58-b6c1", 3), uuid("e2a81f5c-3d7b-4c9e-a016", 4),
		`"imageDataURI":"data:image/png;base64,`+picB64+`"`)
	refusedError := []byte(`{"errors":[{"code":"invalidPositivePrompt","message":"Invalid value for positivePrompt parameter.",` +
		`"parameter":"positivePrompt","taskType":"imageInference","taskUUID":"` + uuid("9d4b7e2a-5c1f-4a83-b0e6", 5) + `"}]}`)
	fine := testkit.RunwareResult(uuid("a1b2c3d4-0000-4e5f-8a9b", 6), uuid("f0e1d2c3-1111-4b5a-9c8d", 7),
		`"imageURL":"https://im.runware.ai/image/ws/0.5/ii/f0e1d2c3.jpg"`)
	for _, b := range [][]byte{withBase64, withDataURI, refusedError, fine} {
		testkit.MustAccept(t, in, b, "User-Agent: Runware-Webhooks/1.0")
	}
	waitDelivered(t, app.Upstream, fine)
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
		testkit.MustAccept(t, in, b)
		testkit.ExpectStatus(t, testkit.Post(t, in, b), http.StatusOK, "duplicate")
	}
	testkit.ExpectStatus(t, testkit.Post(t, relayURL("/in", "token=wrong"), payload(t)), http.StatusUnauthorized, "")
	if r := testkit.Post(t, relayURL("/in", "token="+secrets[0]+"&validationToken=console-check"), nil); r.Status != http.StatusOK || r.Body != "console-check" {
		t.Errorf("Graph's validation answered %d %q, want 200 with its token", r.Status, r.Body)
	}
	// a payload the destination's filter does not take (the query's ignore)
	testkit.ExpectStatus(t, testkit.Post(t, relayURL("/in", "token="+secrets[0]+"&ignore=1"), payload(t)), http.StatusOK, "ignored")
	for _, class := range []string{"rate-accepted", "rate-duplicate", "rate-unauthorized", "rate-ignored", "rate-challenge"} {
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
			if got := eval[string](b, r+`?.querySelector('td.destination')?.textContent`); got != "upstream" {
				t.Errorf("%s: destination %q, want upstream", which, got)
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
			"Attempts": "1", "Last status": "422", "Content-Type": "application/json", "Destination": "upstream",
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

	t.Run("events", func(t *testing.T) {
		evRows := `[...document.querySelectorAll('#events tbody tr')]`
		b.do("opening the relay", chromedp.Navigate(consoleURL+"#relay="+url.QueryEscape(name)))
		b.waitFor("its events, newest first", `!document.getElementById('events-section').hidden && `+evRows+`.length >= 6 && `+
			evRows+`.every((r, i, a) => i === 0 || a[i-1].dataset.id > r.dataset.id)`)
		b.waitFor("the dead ones shown dead", evRows+`.filter(r => r.dataset.state === 'dead').length === 3`)
		b.screenshot(t, "console-events.png")

		// "did task X reach the app?": search its taskUUID
		fineTask := uuid("a1b2c3d4-0000-4e5f-8a9b", 6)
		b.do("searching the task", chromedp.SetValue(chromedp.ID("events-key"), fineTask), chromedp.Click(chromedp.ID("events-go")))
		b.waitFor("only it, delivered", evRows+`.length === 1 && `+evRows+`[0].dataset.state === 'delivered' && `+
			evRows+`[0].querySelector('td.destinations').textContent === 'upstream: delivered (1 attempt)'`)
		b.do("opening it", chromedp.Click(chromedp.CSS(`#events tbody tr td.id a`)))
		b.waitFor("its page: delivered to the app at the first attempt", `!document.getElementById('event-section').hidden && `+
			`document.querySelector('#event-attempts li.attempt.ok .status')?.textContent === '200' && `+
			`document.querySelector('#event-destinations tr[data-destination=upstream] td.state')?.textContent === 'delivered'`)
		b.waitFor("its body", `document.getElementById('event-body').textContent.includes(`+js(fineTask)+`)`)
		b.screenshot(t, "console-event.png")
		b.do("resending it", chromedp.Click(chromedp.ID("event-resend")))
		b.waitFor("the confirmation", `document.getElementById('confirm').open && document.getElementById('confirm-text').textContent.includes('same Idempotency-Key')`)
		b.do("confirming", chromedp.Click(chromedp.ID("confirm-ok")))
		app.WaitFor(t, waitTimeout, "the resent result", func(rs []*testkit.Request) bool { return withBody(rs, fine) == 2 })
		if keys := requestKeys(app.Requests(), fine); len(keys) != 2 || keys[0] != keys[1] {
			t.Errorf("the resent copy came with Idempotency-Key %v, want the first one's", keys)
		}
		b.waitFor("two attempts on its page", `document.querySelectorAll('#event-attempts li.attempt.ok').length === 2`)

		// a dead one: the refusal on its timeline, its image shown
		b.do("back to the events", chromedp.Click(chromedp.ID("event-back")))
		b.waitFor("the events again", `!document.getElementById('events-section').hidden`)
		b.do("searching the dead", chromedp.Evaluate[chromedp.Void](`document.getElementById('events-key').value = ''; `+
			`document.getElementById('events-state').value = 'dead'`), chromedp.Click(chromedp.ID("events-go")))
		b.waitFor("the 3 dead", evRows+`.length === 3 && `+evRows+`.every(r => r.dataset.state === 'dead')`)
		b.do("opening the base64 result", chromedp.Navigate(consoleURL+"#relay="+url.QueryEscape(name)+"&event="+url.QueryEscape(ids["base64"])))
		b.waitFor("its 422 on the timeline and its image", `document.querySelector('#event-attempts li.attempt.failed .status')?.textContent === '422' && `+
			`(i => i && i.complete && i.naturalWidth === 160)(document.querySelector('#event-thumbs img'))`)
		if !eval[bool](b, `document.getElementById('event-resend').disabled`) {
			t.Error("resend is offered for an event delivered nowhere")
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
			a, err := testkit.Send(http.MethodGet, consoleURL+path, nil, "Authorization: "+auth)
			if err != nil || a.Status != http.StatusOK {
				t.Fatalf("GET %s: %v %d %s", path, err, a.Status, a.Body)
			}
			answers = append(answers, a.Body)
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
		waitDelivered(t, app.Upstream, withBase64)
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
		waitDelivered(t, app.Upstream, withDataURI)
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
		barrier(t, app.Upstream, in)
		if n := withBody(app.Requests(), refusedError); n != 1 {
			t.Errorf("the deleted dead letter reached the application %d times, want only its first attempt", n)
		}
	})

	t.Run("pause and resume", func(t *testing.T) {
		dest := `document.querySelector('#destinations tr[data-destination=upstream]')`
		badge := row + `?.querySelector('td.name .badge.paused')`
		b.waitFor("the destination shown delivering", `!document.getElementById('destinations-section').hidden && `+
			dest+`?.querySelector('td.state').textContent === 'delivering' && !`+badge)
		b.do("pausing it", chromedp.Click(chromedp.CSS(`#destinations tr[data-destination=upstream] button.pause`)))
		b.waitFor("the destination shown paused", dest+`?.querySelector('td.state').textContent === 'paused' && `+
			dest+`?.querySelector('button').textContent === 'Resume'`)
		b.waitFor("the relay listed as paused", badge+`?.textContent === 'paused'`)
		if s := opsOverview(t, name); !s.paused() {
			t.Fatalf("the admin API shows the destination not paused after the console paused it: %+v", s)
		}
		held := payload(t)
		testkit.MustAccept(t, in, held)
		b.waitFor("the payload waiting, the relay still paused", cell("backlog")+` === '1' && `+badge)
		b.do("resuming it", chromedp.Click(chromedp.CSS(`#destinations tr[data-destination=upstream] button.resume`)))
		waitDelivered(t, app.Upstream, held)
		b.waitFor("the destination shown delivering again", dest+`?.querySelector('td.state').textContent === 'delivering' && !`+badge)
		b.waitFor("the backlog drained", cell("backlog")+` === '0'`)
		if s := opsOverview(t, name); s.paused() {
			t.Errorf("the admin API shows the destination paused after the console resumed it")
		}
	})

	t.Run("destinations apart", func(t *testing.T) {
		archive := `document.querySelector('#destinations tr[data-destination=archive]')`
		upstream := `document.querySelector('#destinations tr[data-destination=upstream]')`
		b.waitFor("both destinations with their upstream", archive+`?.querySelector('td.host').textContent === `+js(strings.TrimPrefix(app.URL, "http://"))+
			` && `+upstream+`?.querySelector('td.backlog').textContent === '0'`)
		b.do("pausing the archive", chromedp.Click(chromedp.CSS(`#destinations tr[data-destination=archive] button.pause`)))
		b.waitFor("the archive shown paused", archive+`?.querySelector('td.state').textContent === 'paused'`)
		held := payload(t)
		testkit.MustAccept(t, relayURL("/in", "token="+secrets[0]+"&archive=1"), held)
		// the application has it; the archive's copy waits, shown queued
		waitDelivered(t, app.Upstream, held)
		b.waitFor("the archive's copy queued, none for the application", archive+`?.querySelector('td.backlog').textContent === '1' && `+
			upstream+`?.querySelector('td.backlog').textContent === '0' && `+upstream+`?.querySelector('td.state').textContent === 'delivering'`)
		b.do("resuming the archive", chromedp.Click(chromedp.CSS(`#destinations tr[data-destination=archive] button.resume`)))
		app.WaitFor(t, waitTimeout, "the copy at the archive", func(rs []*testkit.Request) bool {
			for _, r := range rs {
				if r.Path == "/archive" && bytes.Equal(r.Body, held) && r.Status == http.StatusOK {
					return true
				}
			}
			return false
		})
		b.waitFor("nothing queued", archive+`?.querySelector('td.backlog').textContent === '0' && `+cell("backlog")+` === '0'`)
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
