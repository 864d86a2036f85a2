package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/kilnfaas/kiln/gateway/outcome"
	"github.com/kilnfaas/kiln/store/apikeys"
)

// Who may do what:
//
//   - The management API (every route under /system/) needs a valid API key
//     as "Authorization: Bearer KEY" — except while no key exists at all,
//     when callers on the gateway's own machine (loopback peers) may use it
//     without one, when they pass the bootstrap gate (bootstrap.go): no
//     web page may use it. That is how `kiln up` starts: open to its own
//     host only, until the first `kiln keys create` closes it.
//   - A public function (the default) needs no key; a private one
//     (deployed with --private) needs a key, with the same loopback rule.
//
// A missing, unknown, revoked or malformed key gets the same 401 and the
// same sentence, so the answer tells an attacker nothing about which.

// unauthorized is the one sentence of every 401.
const unauthorized = "missing or invalid API key: send \"Authorization: Bearer KEY\" (the kiln CLI: --api-key or $KILN_API_KEY); " +
	"an administrator creates keys with `kiln keys create NAME`, and until the first key exists only callers on the gateway's own machine are let in"

// touchEvery bounds how often a key's last use is written: once a minute
// per key per gateway keeps a busy key from turning every request into a
// store write.
const touchEvery = time.Minute

// auth is the gateway's view of the API keys.
type auth struct {
	keys apikeys.Store // nil: no key store, so no key exists
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex // guards touched
	touched map[string]time.Time
}

func newAuth(keys apikeys.Store, log *slog.Logger) *auth {
	return &auth{keys: keys, log: log, now: time.Now, touched: map[string]time.Time{}}
}

// bearer returns the credential of the Authorization header and whether the
// header was sent at all.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", false
	}
	scheme, token, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", true
	}
	return strings.TrimSpace(token), true
}

// isLoopback reports whether the request's peer is this machine.
func isLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// errKeyStore: the key store failed, so the caller can be neither let in
// nor refused with confidence.
var errKeyStore = errors.New("the API key store is unavailable")

// check decides whether r may pass a gate that needs a key. It returns the
// accepted key's name ("" for a loopback caller while no key exists),
// apikeys.ErrUnauthorized, or an error wrapping errKeyStore. While no key
// exists a loopback caller gets in whatever it sends: a stale key in a
// user's environment must not lock them out of a fresh `kiln up`.
func (a *auth) check(ctx context.Context, r *http.Request) (string, error) {
	if token, sent := bearer(r); sent && a.keys != nil {
		k, err := apikeys.Authenticate(ctx, a.keys, token)
		if err == nil {
			a.touch(ctx, k.Name)
			return k.Name, nil
		}
		if !errors.Is(err, apikeys.ErrUnauthorized) {
			return "", errors.Join(errKeyStore, err)
		}
	}
	if !isLoopback(r) {
		return "", apikeys.ErrUnauthorized
	}
	if a.keys != nil {
		any, err := a.keys.Any(ctx)
		if err != nil {
			return "", errors.Join(errKeyStore, err)
		}
		if any {
			return "", apikeys.ErrUnauthorized
		}
	}
	return "", localGate(r)
}

func (a *auth) touch(ctx context.Context, name string) {
	now := a.now()
	a.mu.Lock()
	due := now.Sub(a.touched[name]) >= touchEvery
	if due {
		a.touched[name] = now
	}
	a.mu.Unlock()
	if due {
		if err := a.keys.Touch(ctx, name, now); err != nil {
			a.log.Warn("recording an API key's last use failed", "key", name, "err", err)
		}
	}
}

// refuseCheck answers a failed check: Unauthorized (401) for the caller's
// fault, Forbidden (403) for a local caller the bootstrap gate refused,
// KeyStoreUnavailable (503) for the store's.
func refuseCheck(err error, refuse func(k outcome.Kind, msg string)) {
	switch {
	case errors.Is(err, errKeyStore):
		refuse(outcome.KeyStoreUnavailable, errKeyStore.Error()+", retry shortly: "+err.Error())
	case errors.Is(err, errNotLocal):
		refuse(outcome.Forbidden, err.Error())
	default:
		refuse(outcome.Unauthorized, unauthorized)
	}
}

// managementRoute is the path pattern r is routed to (method stripped)
// and whether it is the management API's: every route under /system/,
// whoever registered it, as the mux would route it.
func (g *Gateway) managementRoute(r *http.Request) (string, bool) {
	_, pattern := g.mux.Handler(r)
	if _, path, ok := strings.Cut(pattern, " "); ok {
		pattern = path
	}
	return pattern, strings.HasPrefix(pattern, "/system/")
}

// serveAuthorized runs the management gate in front of the mux.
func (g *Gateway) serveAuthorized(w http.ResponseWriter, r *http.Request) {
	if route, ok := g.managementRoute(r); ok {
		name, err := g.auth.check(r.Context(), r)
		if err == nil && name == "" {
			err = bootstrapContentType(r, route)
		}
		if err != nil {
			if errors.Is(err, errUnsupportedBody) {
				writeError(w, http.StatusUnsupportedMediaType, apiError{Error: err.Error()})
			} else {
				refuseCheck(err, func(k outcome.Kind, msg string) { writeRefusal(w, k, apiError{Error: msg}) })
			}
			g.log.Info("management request refused", "method", r.Method, "path", r.URL.Path, "peer", r.RemoteAddr,
				"host", r.Host, "origin", r.Header.Get("Origin"), "err", err)
			return
		}
		if name != "" {
			g.log.Debug("management request", "method", r.Method, "path", r.URL.Path, "key", name)
		}
	}
	g.mux.ServeHTTP(w, r)
}

// callerMayInvoke applies fn's access rule, or refuses the request and
// reports false. A Kiln key sent with an invocation is removed from the
// request either way: it is a credential for the platform, and the
// function (perhaps someone else's code) must never see it. Other
// Authorization headers reach the function untouched.
func (g *Gateway) callerMayInvoke(r *http.Request, private bool, refuse func(k outcome.Kind, msg string)) bool {
	if private {
		if _, err := g.auth.check(r.Context(), r); err != nil {
			refuseCheck(err, refuse)
			return false
		}
	}
	if token, _ := bearer(r); strings.HasPrefix(token, apikeys.Prefix) {
		r.Header.Del("Authorization")
	}
	return true
}

// CreatedKey is the answer of POST /system/keys: the only time the key
// itself is ever shown.
type CreatedKey struct {
	Name    string    `json:"name"`
	Key     string    `json:"key"`
	Created time.Time `json:"created"`
}

func (g *Gateway) registerKeyRoutes() {
	g.mux.HandleFunc("POST /system/keys", g.createKey)
	g.mux.HandleFunc("GET /system/keys", g.listKeys)
	g.mux.HandleFunc("DELETE /system/keys/{name}", g.revokeKey)
}

func (g *Gateway) keyStoreMissing(w http.ResponseWriter) bool {
	if g.auth.keys != nil {
		return false
	}
	writeError(w, http.StatusNotImplemented, apiError{
		Error: "this gateway has no API key store: run it with a Redis URL (keys shared by every gateway) or list keys in $KILN_API_KEYS_FILE"})
	return true
}

func (g *Gateway) createKey(w http.ResponseWriter, r *http.Request) {
	if g.keyStoreMissing(w) {
		return
	}
	var req struct {
		Name string `json:"name"`
	}
	req.Name = r.URL.Query().Get("name")
	if body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10)); bodyTimedOut(err) {
		writeError(w, http.StatusRequestTimeout, apiError{Error: g.slowBody()})
		return
	} else if err != nil {
		writeError(w, http.StatusBadRequest, apiError{Error: "reading the request: " + err.Error()})
		return
	} else if len(strings.TrimSpace(string(body))) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			writeError(w, http.StatusBadRequest, apiError{Error: `the body is not valid JSON: send {"name": "NAME"}: ` + err.Error()})
			return
		}
	}
	if req.Name == "" {
		writeError(w, http.StatusBadRequest, apiError{Error: `missing key name: send {"name": "NAME"}`})
		return
	}
	key, h, err := apikeys.Generate()
	if err != nil {
		writeError(w, http.StatusInternalServerError, apiError{Error: err.Error()})
		return
	}
	created := time.Now().UTC()
	if err := g.auth.keys.Add(r.Context(), req.Name, h, created); err != nil {
		g.keyError(w, err)
		return
	}
	g.log.Info("API key created", "key", req.Name)
	writeJSON(w, http.StatusCreated, CreatedKey{Name: req.Name, Key: key, Created: created})
}

func (g *Gateway) listKeys(w http.ResponseWriter, r *http.Request) {
	ks := []apikeys.Key{}
	if g.auth.keys != nil {
		l, err := g.auth.keys.List(r.Context())
		if err != nil {
			g.keyError(w, err)
			return
		}
		ks = append(ks, l...)
	}
	writeJSON(w, http.StatusOK, ks)
}

func (g *Gateway) revokeKey(w http.ResponseWriter, r *http.Request) {
	if g.keyStoreMissing(w) {
		return
	}
	name := r.PathValue("name")
	if err := g.auth.keys.Revoke(r.Context(), name); err != nil {
		g.keyError(w, err)
		return
	}
	g.auth.mu.Lock()
	delete(g.auth.touched, name)
	g.auth.mu.Unlock()
	g.log.Info("API key revoked", "key", name)
	w.WriteHeader(http.StatusNoContent)
}

func (g *Gateway) keyError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, apikeys.ErrInvalidName):
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error()})
	case errors.Is(err, apikeys.ErrExists):
		writeError(w, http.StatusConflict, apiError{Error: err.Error() + ": revoke it first, or choose another name"})
	case errors.Is(err, apikeys.ErrNotFound):
		writeError(w, http.StatusNotFound, apiError{Error: err.Error() + ": see `kiln keys list`"})
	case errors.Is(err, apikeys.ErrReadOnly):
		writeError(w, http.StatusConflict, apiError{Error: err.Error()})
	default:
		writeError(w, http.StatusServiceUnavailable, apiError{Error: errKeyStore.Error() + ": " + err.Error()})
	}
}
