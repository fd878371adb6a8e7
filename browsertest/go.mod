module github.com/hookrelay/caddy-webhook-relay/browsertest

go 1.26.0

require (
	github.com/chromedp/cdproto v0.159.0
	github.com/chromedp/chromedp v0.23.0
	github.com/hookrelay/caddy-webhook-relay v0.0.0
	golang.org/x/crypto v0.57.0
)

require (
	github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
)

replace github.com/hookrelay/caddy-webhook-relay => ../
