package webhookrelay

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"runtime"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Error answers. The ack path refuses with a caddyhttp.HandlerError, so
// Caddy logs it and handle_errors sees it ({err.status_code},
// {err.message}); without handle_errors routes taking it, the answer
// carries {"status":"error","error":"..."}, which a sender's delivery log
// shows.

// refusal is an error answer's reason: err is what the log says (it may
// name a relay, a limit, the auth parameters), tell what the sender is told
// in the body (never a secret or an expected value).
type refusal struct {
	err  error
	tell string
}

func (e *refusal) Error() string { return e.err.Error() }
func (e *refusal) Unwrap() error { return e.err }

// refuse is the error the ack path returns for an answer other than 200:
// a caddyhttp.HandlerError with status, which Caddy logs and handle_errors
// sees. tell is what the sender reads; "" tells it err's own message.
func refuse(status int, tell string, err error) error {
	if tell == "" {
		tell = err.Error()
	}
	he := caddyhttp.HandlerError{StatusCode: status, Err: &refusal{err: err, tell: tell}}
	// the log's err_trace names the line that refused, as caddyhttp.Error
	// would called from there
	if pc, file, line, ok := runtime.Caller(1); ok {
		he.Trace = fmt.Sprintf("%s (%s:%d)", path.Base(runtime.FuncForPC(pc).Name()), path.Base(file), line)
	}
	return caddyhttp.Error(status, he) // adds the error ID
}

// errorBody is the JSON an error answer carries.
type errorBody struct {
	Status string `json:"status"` // always "error"
	Error  string `json:"error"`
}

// answerError writes err's answer, {"status":"error","error":"..."} with
// its status, unless the server's handle_errors routes answer it: then
// they own the answer and nothing is written here. The handler still
// returns err, so Caddy logs it as for any handler; without error routes
// the server then writes the status again, which changes nothing on the
// wire (an access-logged request's recorder ignores it; otherwise net/http
// notes a superfluous WriteHeader at Caddy's debug level).
func answerError(w http.ResponseWriter, r *http.Request, err error) {
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) {
		return
	}
	tell := http.StatusText(he.StatusCode)
	if ref, ok := errors.AsType[*refusal](err); ok {
		tell = ref.tell
	}
	if errorRoutesAnswer(r, err) {
		return
	}
	body, _ := json.Marshal(errorBody{Status: "error", Error: tell})
	w.Header()["Content-Type"] = []string{"application/json"}
	w.WriteHeader(he.StatusCode)
	_, _ = w.Write(append(body, '\n'))
}

// errorRoutesAnswer reports whether the handle_errors routes of the server
// serving r would answer err: a route whose matchers take the request (as
// the server restores it for them, with err's placeholders set) and that
// does more than pass it on to routes that do not. Every site on the same
// address shares one server, and with it the error routes: another site's
// handle_errors has a host matcher that does not take this request, and
// `handle_errors 404` a status matcher that does not take a 401.
func errorRoutesAnswer(r *http.Request, err error) bool {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || srv.Errors == nil || len(srv.Errors.Routes) == 0 {
		return false
	}
	if _, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); !ok {
		return true // WithError needs it; the server's routes do too
	}
	er := srv.Errors.WithError(r, err)
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		u := *orig.URL
		er.Method, er.RemoteAddr, er.RequestURI, er.URL = orig.Method, orig.RemoteAddr, orig.RequestURI, &u
	}
	return routesAnswer(srv.Errors.Routes, er)
}

func routesAnswer(routes caddyhttp.RouteList, r *http.Request) bool {
	for _, route := range routes {
		if ok, err := route.MatcherSets.AnyMatchWithError(r); err != nil || !ok {
			continue
		}
		for _, h := range route.Handlers {
			sub, ok := h.(*caddyhttp.Subroute)
			if !ok || routesAnswer(sub.Routes, r) {
				return true
			}
		}
	}
	return false
}
