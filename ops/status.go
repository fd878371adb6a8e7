package ops

import (
	"context"
	"time"
)

// Totals are a relay's counts since Caddy started, the same the Prometheus
// counters show.
type Totals struct {
	Requests    map[string]int64 // by outcome of the ack path
	Deliveries  map[string]int64 // attempts by result
	DeadDropped int64            // dead letters removed by max_dead, dead_retention or max_stored
}

// Bounds are what the status shows of a relay's newest config.
type Bounds struct {
	UpstreamHost  string            // the first destination's
	Hosts         map[string]string // each destination's upstream host, by name
	MaxMemory     int64
	MaxDead       int
	DeadRetention time.Duration
	MaxStored     int64
}

// RelayStatus is one relay in the overview.
type RelayStatus struct {
	Name         string     `json:"name"`
	Store        string     `json:"store"`
	UpstreamHost string     `json:"upstream_host"`
	Backlog      int        `json:"backlog"`
	InFlight     int        `json:"in_flight"`
	DeadLetters  int        `json:"dead_letters"`
	OldestQueued *time.Time `json:"oldest_queued,omitempty"`
	// Keys counts the dedupe markers held; MemoryBytes the bodies held in
	// memory now.
	Keys        int   `json:"keys"`
	MemoryBytes int64 `json:"memory_bytes"`
	// StoredBytes is what the store keeps of payloads and dead letters
	// (bodies and kept headers), counted against MaxStored.
	StoredBytes int64 `json:"stored_bytes"`
	DeadDropped int64 `json:"dead_dropped"`
	// The bounds in force, from the newest config.
	MaxMemory     int64            `json:"max_memory"`
	MaxDead       int              `json:"max_dead"`
	MaxStored     int64            `json:"max_stored"`
	DeadRetention string           `json:"dead_retention"`
	Requests      map[string]int64 `json:"requests"`
	Deliveries    map[string]int64 `json:"deliveries"`
	// Destinations are the relay's destinations, each paused or not (as
	// the store keeps it); empty when the store cannot answer.
	Destinations []DestinationStatus `json:"destinations"`
	// Error says why the store's numbers are missing.
	Error string `json:"error,omitempty"`
}

// List is the status of every relay running in this process, by name.
func List(ctx context.Context) []RelayStatus {
	out := []RelayStatus{}
	for _, r := range Relays() {
		out = append(out, Status(ctx, r))
	}
	return out
}

// Status is r's status now. A store that cannot answer leaves its numbers
// zero and says why in Error.
func Status(ctx context.Context, r Relay) RelayStatus {
	s := RelayStatus{Name: r.Name(), Store: r.StoreIdentity(), MemoryBytes: r.MemoryUsed(), Destinations: []DestinationStatus{}}
	// The store first, the totals after it: a delivery is counted before
	// it leaves the queue, so totals read later always include every
	// delivery the backlog no longer shows.
	st, err := r.Store().Stats(ctx)
	s.InFlight = r.InFlight() // after the store too: an attempt leaves it first
	t := r.Totals()
	s.Requests, s.Deliveries, s.DeadDropped = t.Requests, t.Deliveries, t.DeadDropped
	if err != nil {
		s.Error = "store unavailable: " + err.Error()
	} else {
		s.Backlog, s.DeadLetters, s.Keys, s.StoredBytes = st.Backlog, st.Dead, st.Keys, st.Stored
		if !st.OldestQueued.IsZero() {
			s.OldestQueued = &st.OldestQueued
		}
		if d, err := destinations(ctx, r, st.Lanes); err != nil {
			s.Error = "store unavailable: " + err.Error()
		} else {
			s.Destinations = d
		}
	}
	if b, ok := r.Bounds(); ok {
		s.UpstreamHost, s.MaxMemory, s.MaxDead, s.MaxStored = b.UpstreamHost, b.MaxMemory, b.MaxDead, b.MaxStored
		s.DeadRetention = b.DeadRetention.String()
	}
	return s
}
