package ops

import (
	"context"
	"slices"
	"strings"
)

// DestinationStatus is one destination of a relay: its name, and whether
// it is paused (payloads are accepted and wait in the store; nothing is
// attempted until it is resumed).
type DestinationStatus struct {
	Name   string `json:"name"`
	Paused bool   `json:"paused"`
	// UpstreamHost is where it delivers to (from the newest config).
	UpstreamHost string `json:"upstream_host,omitempty"`
	// Backlog counts its deliveries queued in the store, every process's.
	Backlog int `json:"backlog"`
}

// PauseResult is what a pause or resume answers: the relay's destinations
// as they are now.
type PauseResult struct {
	Relay        string              `json:"relay"`
	Destinations []DestinationStatus `json:"destinations"`
}

// destinations are r's destinations, their pauses and backlogs as its
// store keeps them (lanes: the store's queued deliveries by destination;
// nil leaves the backlogs zero).
func destinations(ctx context.Context, r Relay, lanes map[string]int) ([]DestinationStatus, error) {
	paused, err := r.Store().Paused(ctx)
	if err != nil {
		return nil, err
	}
	b, _ := r.Bounds()
	out := []DestinationStatus{}
	for _, name := range r.Destinations() {
		out = append(out, DestinationStatus{Name: name, Paused: slices.Contains(paused, name),
			UpstreamHost: b.Hosts[name], Backlog: lanes[name]})
	}
	return out, nil
}

// SetPaused pauses (paused true) or resumes the relay's destination named,
// or, with destination empty, every destination of the relay. The pause is
// kept in the relay's store: it survives a restart, and every process
// sharing the store honours it. The relay's deliveries are woken, so a
// resume delivers at once. A destination the relay does not have is
// ErrNoDestination, naming the ones it has.
func SetPaused(ctx context.Context, relay, destination string, paused bool) (PauseResult, error) {
	r, err := Find(relay)
	if err != nil {
		return PauseResult{}, err
	}
	names := r.Destinations()
	if destination != "" {
		if !slices.Contains(names, destination) {
			return PauseResult{}, fail(ErrNoDestination, "relay %q has no destination %q; its destinations: %s",
				relay, destination, strings.Join(names, ", "))
		}
		names = []string{destination}
	}
	for _, name := range names {
		if err := r.Store().SetPaused(ctx, name, paused); err != nil {
			return PauseResult{}, storeError(err, "")
		}
	}
	r.Wake()
	st, err := r.Store().Stats(ctx)
	if err != nil {
		return PauseResult{}, storeError(err, "")
	}
	dests, err := destinations(ctx, r, st.Lanes)
	if err != nil {
		return PauseResult{}, storeError(err, "")
	}
	return PauseResult{Relay: relay, Destinations: dests}, nil
}
