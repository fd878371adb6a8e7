// Package browsertest drives the console in a real headless browser
// (Chromium or Chrome, through chromedp) against the Caddy users build
// (../cmd/caddy). It is a Go module of its own so that chromedp stays out of
// the plugin's go.mod: an xcaddy build of the plugin never resolves it.
//
// Run it from the repository with
//
//	(cd browsertest && go test -count=1 ./...)
//
// (./scripts/test does, with the browser it found in CHROME_PATH). With
// -console.screenshots=../docs it also refreshes the console's screenshots
// in docs/ (console.png, console-letter.png).
package browsertest
