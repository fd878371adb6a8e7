package verify

import "time"

// elevenlabs: ElevenLabs-Signature "t=<ts>,v0=<hex>", the HMAC-SHA256 of
// "ts.body"; ElevenLabs' SDK allows a timestamp 30 minutes old.
var elevenlabsScheme = &scheme{
	name:       "elevenlabs",
	defaultKey: []string{"body"}, // no signed event id; a retry repeats the body
	headers:    []string{"ElevenLabs-Signature"},
	tolerance:  30 * time.Minute,
	key:        rawKey,
	parse:      parseTimestamped("ElevenLabs-Signature", ",", "t", "v0", "."),
}
