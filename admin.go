package webhookrelay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hookrelay/caddy-webhook-relay/queue"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI shows every relay's queue and manages its dead letters through
// Caddy's admin endpoint:
//
//	GET    /webhook_relay/                        every relay
//	GET    /webhook_relay/<name>/dead             dead letters, paged (?after=<id>&limit=<n>)
//	GET    /webhook_relay/<name>/dead/<id>        one dead letter with its body
//	POST   /webhook_relay/<name>/dead/replay      replay all, or {"ids":[...]}
//	DELETE /webhook_relay/<name>/dead/<id>        delete one dead letter
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.webhook_relay",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes implements caddy.AdminRouter.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/webhook_relay/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// relayStatus is one relay in the overview.
type relayStatus struct {
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
	DeadDropped int64 `json:"dead_dropped"`
	// The bounds in force, from the newest config.
	MaxMemory     int64            `json:"max_memory"`
	MaxDead       int              `json:"max_dead"`
	DeadRetention string           `json:"dead_retention"`
	Requests      map[string]int64 `json:"requests"`
	Deliveries    map[string]int64 `json:"deliveries"`
	Error         string           `json:"error,omitempty"`
}

// deadLetter is a dead letter as the admin API and the console show it.
type deadLetter struct {
	ID         string    `json:"id"`
	Key        string    `json:"key"`
	Received   time.Time `json:"received"`
	Attempts   int       `json:"attempts"`
	LastStatus int       `json:"last_status"`
	LastError  string    `json:"last_error"`
	Died       time.Time `json:"died,omitzero"`
	BodySize   int       `json:"body_size"`
	// Request is set for a single dead letter: what was kept of the
	// original request for its delivery.
	Request *keptRequest `json:"request,omitempty"`
	// Body is set for a single dead letter: the body as text when it is
	// UTF-8, otherwise BodyBase64 holds it.
	Body       *string `json:"body,omitempty"`
	BodyBase64 []byte  `json:"body_base64,omitempty"`
}

// keptRequest is what a dead letter kept of its original request, field
// by field: only what is listed here is ever shown (the auth parameters
// were removed from the query before it was stored).
type keptRequest struct {
	Query        string `json:"query,omitempty"`
	ContentType  string `json:"content_type,omitempty"`
	UserAgent    string `json:"user_agent,omitempty"`
	ForwardedFor string `json:"forwarded_for,omitempty"`
	// Headers are the incoming headers kept for the upstream: the verify
	// scheme's own (signatures, never secrets) and forward_headers.
	Headers []queue.HeaderField `json:"headers,omitempty"`
}

// deadPage is one page of a relay's dead letters; Next, when set, is the
// after of the next page.
type deadPage struct {
	Entries []deadLetter `json:"entries"`
	Next    string       `json:"next,omitempty"`
}

func (a adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	path := strings.Trim(strings.TrimPrefix(r.URL.Path, "/webhook_relay/"), "/")
	if path == "" {
		if r.Method != http.MethodGet {
			return apiError(http.StatusMethodNotAllowed, "use GET")
		}
		return writeJSON(w, http.StatusOK, overview(r.Context()))
	}

	parts := strings.Split(path, "/")
	rl, err := relayNamed(parts[0])
	if err != nil {
		return err
	}
	switch {
	case len(parts) == 2 && parts[1] == "dead" && r.Method == http.MethodGet:
		limit, err := parseLimit(r.URL.Query().Get("limit"))
		if err != nil {
			return err
		}
		page, err := listDead(r.Context(), rl, r.URL.Query().Get("after"), limit)
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, page)
	case len(parts) == 3 && parts[1] == "dead" && parts[2] == "replay" && r.Method == http.MethodPost:
		ids, err := replayRequest(r.Body)
		if err != nil {
			return err
		}
		n, err := replayDead(r.Context(), rl, ids)
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, map[string]int{"replayed": n})
	case len(parts) == 3 && parts[1] == "dead" && r.Method == http.MethodGet:
		d, err := getDead(r.Context(), rl, parts[2])
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, d)
	case len(parts) == 3 && parts[1] == "dead" && r.Method == http.MethodDelete:
		if err := deleteDead(r.Context(), rl, parts[2]); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, map[string]string{"deleted": parts[2]})
	}
	if len(parts) >= 2 && len(parts) <= 3 && parts[1] == "dead" {
		return apiError(http.StatusMethodNotAllowed, "method not allowed here; see the README's admin API section")
	}
	return apiError(http.StatusNotFound, "unknown route; see the README's admin API section")
}

// The functions below are what the admin API and the console both do: they
// work on the relays pooled in this process and fail with a caddy.APIError
// that carries the HTTP status to answer.

// overview is every relay open in this process, by name.
func overview(ctx context.Context) []relayStatus {
	out := []relayStatus{}
	for _, rl := range openRelays() {
		s := relayStatus{
			Name:         rl.name,
			Store:        rl.storeIdentity,
			UpstreamHost: rl.upstreamHost(),
			MemoryBytes:  rl.memory.Used(),
		}
		// The store first, the totals after it: a delivery is counted
		// before it leaves the queue, so totals read later always include
		// every delivery the backlog no longer shows.
		st, err := rl.store.Stats(ctx)
		s.InFlight = rl.engine.InFlight() // after the store too: an attempt leaves it first
		s.DeadDropped = counterValue(metrics.deadDrops, rl.name)
		s.Requests = counterValues(metrics.requests, rl.name, "outcome")
		s.Deliveries = counterValues(metrics.deliveries, rl.name, "result")
		if err != nil {
			s.Error = "store unavailable: " + err.Error()
		} else {
			s.Backlog, s.DeadLetters, s.Keys = st.Backlog, st.Dead, st.Keys
			if !st.OldestQueued.IsZero() {
				s.OldestQueued = &st.OldestQueued
			}
		}
		if h := rl.newest(); h != nil {
			s.MaxMemory, s.MaxDead = h.MaxMemory, h.MaxDead
			s.DeadRetention = time.Duration(h.DeadRetention).String()
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// maxDeadPage bounds one page of dead letters.
const maxDeadPage = 1000

// parseLimit reads a page size; empty is 100.
func parseLimit(v string) (int, error) {
	if v == "" {
		return 100, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxDeadPage {
		return 0, apiError(http.StatusBadRequest, fmt.Sprintf("limit: want a whole number from 1 to %d", maxDeadPage))
	}
	return n, nil
}

// listDead is one page of rl's dead letters, without bodies, in id order
// after the id after (empty: from the first).
func listDead(ctx context.Context, rl *pooledRelay, after string, limit int) (deadPage, error) {
	entries, err := rl.deadLetters().Dead(ctx, after, limit)
	if err != nil {
		return deadPage{}, storeError(err, "")
	}
	page := deadPage{Entries: []deadLetter{}}
	for _, e := range entries {
		page.Entries = append(page.Entries, viewDead(e, false))
	}
	if len(entries) == limit {
		page.Next = entries[len(entries)-1].ID
	}
	return page, nil
}

// getDead is one dead letter with its body and kept request.
func getDead(ctx context.Context, rl *pooledRelay, id string) (deadLetter, error) {
	e, err := rl.deadLetters().DeadEntry(ctx, id)
	if err != nil {
		return deadLetter{}, storeError(err, id)
	}
	return viewDead(e, true), nil
}

// replayRequest reads the admin API's replay body: none replays all,
// {"ids":[...]} those ids. Any other JSON object replays nothing, never
// everything.
func replayRequest(body io.Reader) ([]string, error) {
	var req struct {
		IDs []string `json:"ids"`
	}
	b, err := io.ReadAll(io.LimitReader(body, 1<<20))
	if err != nil {
		return nil, apiError(http.StatusBadRequest, "reading the request: "+err.Error())
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil, nil
	}
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, apiError(http.StatusBadRequest, `want no body (replay all) or {"ids":["<id>", ...]}`)
	}
	if req.IDs == nil {
		req.IDs = []string{} // {"ids":null} or {} replays nothing, never everything
	}
	return req.IDs, nil
}

// replayDead puts the dead letters in ids (nil: all of them) back in rl's
// queue, wakes its deliveries, and says how many went back; unknown ids are
// skipped.
func replayDead(ctx context.Context, rl *pooledRelay, ids []string) (int, error) {
	n, err := rl.deadLetters().Replay(ctx, ids)
	if err != nil {
		return 0, storeError(err, "")
	}
	rl.engine.Wake()
	return n, nil
}

// deleteDead removes one dead letter of rl.
func deleteDead(ctx context.Context, rl *pooledRelay, id string) error {
	if err := rl.deadLetters().DeleteDead(ctx, id); err != nil {
		return storeError(err, id)
	}
	return nil
}

func viewDead(e *queue.Entry, withBody bool) deadLetter {
	d := deadLetter{
		ID: e.ID, Key: e.Key, Received: e.Received, Attempts: e.Attempts, Died: e.Died,
		LastStatus: e.LastStatus, LastError: e.LastError, BodySize: max(e.BodySize, len(e.Body)),
	}
	if withBody {
		d.Request = &keptRequest{
			Query:        e.Request.RawQuery,
			ContentType:  e.Request.ContentType,
			UserAgent:    e.Request.UserAgent,
			ForwardedFor: e.Request.ForwardedFor,
			Headers:      e.Request.Headers,
		}
		if utf8.Valid(e.Body) {
			s := string(e.Body)
			d.Body = &s
		} else {
			d.BodyBase64 = e.Body
		}
	}
	return d
}

// relayNamed is the relay called name, or a 404 saying none runs.
func relayNamed(name string) (*pooledRelay, error) {
	if rl := findRelay(name); rl != nil {
		return rl, nil
	}
	return nil, apiError(http.StatusNotFound, fmt.Sprintf("no relay named %q is running", name))
}

// deadLetters is the operator's view of rl's store: all the admin API and
// the console may do with it.
func (rl *pooledRelay) deadLetters() queue.DeadLetters { return rl.store }

func findRelay(name string) *pooledRelay {
	for _, rl := range openRelays() {
		if rl.name == name {
			return rl
		}
	}
	return nil
}

// counterValues reads one relay's counters of a vector, keyed by the other
// label.
func counterValues(vec *prometheus.CounterVec, relayName, label string) map[string]int64 {
	out := make(map[string]int64)
	ch := make(chan prometheus.Metric, 16)
	go func() {
		vec.Collect(ch)
		close(ch)
	}()
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil {
			continue
		}
		var relayLabel, key string
		for _, l := range d.GetLabel() {
			switch l.GetName() {
			case "relay":
				relayLabel = l.GetValue()
			case label:
				key = l.GetValue()
			}
		}
		if relayLabel == relayName {
			out[key] = int64(d.GetCounter().GetValue())
		}
	}
	return out
}

// counterValue reads one relay's counter of a vector labelled by relay only.
func counterValue(vec *prometheus.CounterVec, relayName string) int64 {
	return counterValues(vec, relayName, "")[""]
}

func storeError(err error, id string) error {
	if errors.Is(err, queue.ErrNotFound) {
		return apiError(http.StatusNotFound, fmt.Sprintf("no dead letter with id %q", id))
	}
	return apiError(http.StatusServiceUnavailable, "store unavailable: "+err.Error())
}

func apiError(status int, msg string) error {
	return caddy.APIError{HTTPStatus: status, Err: errors.New(msg)}
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// Interface guard
var _ caddy.AdminRouter = (*adminAPI)(nil)
