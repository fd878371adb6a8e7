package browsertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/hookrelay/caddy-webhook-relay/internal/testkit"
)

// browser is a headless Chromium (or Chrome) driven through the DevTools protocol,
// recording every request the page makes and everything it logs.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	requests []string
	messages []chromedp.ConsoleMessage
}

// browserNames are the commands a Chromium or a Chrome goes by, and
// browserPaths where one lives off the PATH.
var (
	browserNames = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"}
	browserPaths = []string{
		"/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
		"/Applications/Chromium.app/Contents/MacOS/Chromium",
		"/opt/google/chrome/chrome",
		"/snap/bin/chromium",
	}
)

// chromiumPath finds the browser: CHROME_PATH (./scripts/test sets it to
// the one it found), else any Chromium or Chrome there is. Without one it
// fails the test saying how to install one.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROME_PATH"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("CHROME_PATH=%s: %v", p, err)
		}
		return p
	}
	for _, name := range browserNames {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	for _, p := range browserPaths {
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	t.Fatalf("no Chromium or Chrome found (%s, or CHROME_PATH): the console test drives a real browser. "+
		"Install one, e.g. `apt-get install chromium` (Debian; ./scripts/test does when none is there), "+
		"or set CHROME_PATH to one, and run the tests again", strings.Join(browserNames, ", "))
	return ""
}

// openBrowser starts a headless Chromium with a fresh profile, with
// headers (e.g. Authorization) on every request it makes. It stops when
// the test ends.
func openBrowser(t *testing.T, headers map[string]string) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	b := &browser{t: t, ctx: ctx}

	requests := chromedp.Events(ctx, network.RequestWillBeSent)
	go func() {
		for ev, err := range requests {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.requests = append(b.requests, ev.Request.Method+" "+ev.Request.URL)
			b.mu.Unlock()
		}
	}()
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.messages = append(b.messages, m)
			b.mu.Unlock()
		}
	}()
	if len(headers) > 0 {
		h := network.Headers{}
		for k, v := range headers {
			h[k] = v
		}
		if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: h}); err != nil {
			t.Fatalf("setting the browser's headers: %v", err)
		}
	}
	return b
}

// do runs actions, bounded by waitTimeout.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v\n%s", what, err, b.state())
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("browser: evaluating %s: %v", expr, err)
	}
	return v
}

// waitFor polls the page until the JavaScript expression cond is true, and
// fails the test after waitTimeout.
func (b *browser) waitFor(what, cond string) {
	b.t.Helper()
	var err error
	testkit.Eventually(b.t, waitTimeout, func() bool {
		ctx, cancel := context.WithTimeout(b.ctx, waitTimeout)
		defer cancel()
		var ok bool
		ok, err = chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+cond+")"))
		return err == nil && ok
	}, "browser: waiting for %s (%s; last error %v)\n%s",
		what, cond, testkit.Lazy(func() string { return fmt.Sprint(err) }), testkit.Lazy(b.state))
}

// state describes what the page shows, for failure messages.
func (b *browser) state() string {
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
	if err != nil && !errors.Is(err, context.Canceled) {
		text = "(page unreadable: " + err.Error() + ")"
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var msgs []string
	for _, m := range b.messages {
		msgs = append(msgs, fmt.Sprintf("%s: %s", m.Type, m.Text))
	}
	return fmt.Sprintf("page:\n%s\nconsole:\n  %s", indent(text), strings.Join(msgs, "\n  "))
}

func indent(s string) string { return "  " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n  ") }

// requestsMade is every request the page made so far, "METHOD URL".
func (b *browser) requestsMade() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.requests...)
}

// waitForRequest waits until the page makes a request starting with
// prefix ("METHOD URL"), after the first n it made.
func (b *browser) waitForRequest(what string, n int, prefix string) {
	b.t.Helper()
	testkit.Eventually(b.t, waitTimeout, func() bool {
		return slices.ContainsFunc(b.requestsMade()[n:], func(r string) bool { return strings.HasPrefix(r, prefix) })
	}, "browser: waiting for %s (%s...)\n%s", what, prefix, testkit.Lazy(b.state))
}

// problems is every error and exception the page logged so far.
func (b *browser) problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.messages {
		if m.Type == chromedp.ConsoleError || m.IsException() {
			out = append(out, fmt.Sprintf("%s at %s:%d: %s", m.Type, m.URL, m.Line+1, m.Text))
		}
	}
	return out
}

// js quotes s as a JavaScript string.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
