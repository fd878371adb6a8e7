// Package caddytest holds the integration tests of the webhook_relay
// handler: a real Caddy started through Caddy's caddytest harness (on free
// ports picked when the tests start; one Caddy shared by every test of the
// package, so the tests never run in parallel), real upstreams listening on
// 127.0.0.1:0, and the Caddyfile adapt tests in caddyfile_adapt/.
//
// Run them with
//
//	go test -race -count=1 ./caddytest/
package caddytest
