package verify

import "time"

// Presets: senders that sign exactly as Standard Webhooks (OpenAI,
// Replicate) or Svix (Clerk, Resend) do, under their own names.

func standardPreset(name string) *scheme {
	return &scheme{
		name:       name,
		defaultKey: []string{"header.webhook-id"},
		headers:    []string{"webhook-id", "webhook-timestamp", "webhook-signature"},
		tolerance:  5 * time.Minute,
		key:        whsecKey,
		parse:      parseStandard("webhook-id", "webhook-timestamp", "webhook-signature"),
	}
}

func svixPreset(name string) *scheme {
	return &scheme{
		name:       name,
		defaultKey: []string{"header.svix-id"},
		headers:    []string{"svix-id", "svix-timestamp", "svix-signature"},
		tolerance:  5 * time.Minute,
		key:        whsecKey,
		parse:      parseStandard("svix-id", "svix-timestamp", "svix-signature"),
	}
}
