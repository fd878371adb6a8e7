package ops

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
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
//	POST   /webhook_relay/<name>/dead/replay      replay: no body (all), {"ids":[...]}, {"all":true} or {"match":{...}}
//	POST   /webhook_relay/<name>/dead/delete      delete: {"ids":[...]}, {"all":true} or {"match":{...}}
//	DELETE /webhook_relay/<name>/dead/<id>        delete one dead letter
//	POST   /webhook_relay/<name>/pause            pause every destination of the relay
//	POST   /webhook_relay/<name>/resume           resume every destination of the relay
//	POST   /webhook_relay/<name>/destinations/<destination>/pause    pause one
//	POST   /webhook_relay/<name>/destinations/<destination>/resume   resume one
//
// A match ({"destination":..., "status":..., "key":"<substring>",
// "since":"<RFC 3339>", "until":"<RFC 3339>"}, see Match) acts on every
// dead letter that matches, not one page. Replay answers {"replayed": n},
// delete {"deleted": n}. An error is answered with its status and
// {"error": "..."}.
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

func (a adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	if err := a.route(w, r); err != nil {
		return HTTPError(err)
	}
	return nil
}

func (adminAPI) route(w http.ResponseWriter, r *http.Request) error {
	path := strings.Trim(strings.TrimPrefix(r.URL.Path, "/webhook_relay/"), "/")
	if path == "" {
		if r.Method != http.MethodGet {
			return apiError(http.StatusMethodNotAllowed, "use GET")
		}
		return WriteJSON(w, http.StatusOK, List(r.Context()))
	}

	parts := strings.Split(path, "/")
	name := parts[0]
	if _, err := Find(name); err != nil {
		return err
	}
	switch {
	case len(parts) == 2 && parts[1] == "dead" && r.Method == http.MethodGet:
		limit, err := ParseLimit(r.URL.Query().Get("limit"))
		if err != nil {
			return err
		}
		page, err := ListDead(r.Context(), name, r.URL.Query().Get("after"), limit)
		if err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, page)
	case len(parts) == 3 && parts[1] == "dead" && parts[2] == "replay" && r.Method == http.MethodPost:
		sel, err := selectionRequest(r.Body, true)
		if err != nil {
			return err
		}
		n, err := ReplaySelected(r.Context(), name, sel)
		if err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, map[string]int{"replayed": n})
	case len(parts) == 3 && parts[1] == "dead" && parts[2] == "delete" && r.Method == http.MethodPost:
		sel, err := selectionRequest(r.Body, false)
		if err != nil {
			return err
		}
		n, err := DeleteSelected(r.Context(), name, sel)
		if err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, map[string]int{"deleted": n})
	case len(parts) == 3 && parts[1] == "dead" && r.Method == http.MethodGet:
		d, err := ShowDead(r.Context(), name, parts[2])
		if err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, d)
	case len(parts) == 2 && (parts[1] == "pause" || parts[1] == "resume") && r.Method == http.MethodPost:
		return pauseRoute(w, r, name, "", parts[1])
	case len(parts) == 4 && parts[1] == "destinations" && (parts[3] == "pause" || parts[3] == "resume") && r.Method == http.MethodPost:
		return pauseRoute(w, r, name, parts[2], parts[3])
	case len(parts) == 2 && parts[1] == "events" && r.Method == http.MethodGet:
		s, err := ParseEventSearch(r.URL.Query())
		if err != nil {
			return err
		}
		page, err := ListEvents(r.Context(), name, s)
		if err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, page)
	case len(parts) == 3 && parts[1] == "events" && r.Method == http.MethodGet:
		e, err := ShowEvent(r.Context(), name, parts[2])
		if err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, e)
	case len(parts) == 4 && parts[1] == "events" && parts[3] == "resend" && r.Method == http.MethodPost:
		n, err := Resend(r.Context(), name, parts[2])
		if err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, map[string]int{"resent": n})
	case len(parts) == 3 && parts[1] == "dead" && r.Method == http.MethodDelete:
		if err := Delete(r.Context(), name, parts[2]); err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, map[string]string{"deleted": parts[2]})
	}
	if len(parts) >= 2 && len(parts) <= 3 && (parts[1] == "dead" || parts[1] == "events") ||
		len(parts) == 4 && parts[1] == "events" && parts[3] == "resend" ||
		len(parts) == 2 && (parts[1] == "pause" || parts[1] == "resume") ||
		len(parts) == 4 && parts[1] == "destinations" && (parts[3] == "pause" || parts[3] == "resume") {
		return apiError(http.StatusMethodNotAllowed, "method not allowed here; see the README's admin API section")
	}
	return apiError(http.StatusNotFound, "unknown route; see the README's admin API section")
}

// pauseRoute pauses (verb "pause") or resumes the relay's destination, or
// with destination empty all of them, and answers the destinations as
// they are now.
func pauseRoute(w http.ResponseWriter, r *http.Request, relay, destination, verb string) error {
	res, err := SetPaused(r.Context(), relay, destination, verb == "pause")
	if err != nil {
		return err
	}
	return WriteJSON(w, http.StatusOK, res)
}

// selectionRequest reads the body of a replay or a delete: a Selection.
// No body at all is every letter for a replay (emptyIsAll), an error for a
// delete. An object that names nothing ({} or {"ids":null}) acts on
// nothing, never on everything; an unknown field is an error, so that a
// misspelt match field cannot widen a match.
func selectionRequest(body io.Reader, emptyIsAll bool) (Selection, error) {
	want := `want {"ids":["<id>", ...]}, {"all":true} or {"match":{...}}`
	if emptyIsAll {
		want = `want no body (replay all), {"ids":["<id>", ...]}, {"all":true} or {"match":{...}}`
	}
	b, err := io.ReadAll(io.LimitReader(body, 1<<20))
	if err != nil {
		return Selection{}, apiError(http.StatusBadRequest, "reading the request: "+err.Error())
	}
	if len(bytes.TrimSpace(b)) == 0 {
		if emptyIsAll {
			return Selection{All: true}, nil
		}
		return Selection{}, apiError(http.StatusBadRequest, want)
	}
	var sel Selection
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sel); err != nil {
		return Selection{}, apiError(http.StatusBadRequest, want+": "+err.Error())
	}
	if dec.More() {
		return Selection{}, apiError(http.StatusBadRequest, want+": one JSON object only")
	}
	return sel, nil
}

// HTTPError is the answer to an operation's error: its status by its kind
// (ErrNoRelay and ErrNotFound 404, ErrInvalid 400, ErrStore 503, anything
// else 500) and its message. An error that is already a caddy.APIError
// keeps its status. The console answers the same. ErrNoDestination is 404
// too.
func HTTPError(err error) caddy.APIError {
	var ae caddy.APIError
	if errors.As(err, &ae) {
		return ae
	}
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNoRelay), errors.Is(err, ErrNotFound), errors.Is(err, ErrNoDestination):
		status = http.StatusNotFound
	case errors.Is(err, ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, ErrStore):
		status = http.StatusServiceUnavailable
	}
	return caddy.APIError{HTTPStatus: status, Err: err}
}

func apiError(status int, msg string) error {
	return caddy.APIError{HTTPStatus: status, Err: errors.New(msg)}
}

// WriteJSON answers v as JSON with the status.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// Interface guard
var _ caddy.AdminRouter = (*adminAPI)(nil)
