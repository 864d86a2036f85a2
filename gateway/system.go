package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"

	"github.com/kilnfaas/kiln/store/registry"
)

// Described is the answer of GET /system/functions/{name}.
type Described struct {
	registry.Function
	Versions []registry.Function `json:"versions"`
}

func (g *Gateway) list(w http.ResponseWriter, r *http.Request) {
	fs, err := g.cfg.Registry.ListFunctions(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, apiError{Error: "the function registry is unavailable: " + err.Error()})
		return
	}
	if fs == nil {
		fs = []registry.Function{}
	}
	writeJSON(w, http.StatusOK, fs)
}

func (g *Gateway) describe(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	f, err := g.cfg.Registry.GetFunction(r.Context(), name, r.URL.Query().Get("version"))
	if err != nil {
		g.registryError(w, name, err)
		return
	}
	vs, err := g.cfg.Registry.Versions(r.Context(), name)
	if err != nil {
		g.registryError(w, name, err)
		return
	}
	writeJSON(w, http.StatusOK, Described{Function: f, Versions: vs})
}

func (g *Gateway) remove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := g.cfg.Registry.DeleteFunction(r.Context(), name); err != nil {
		g.registryError(w, name, err)
		return
	}
	g.dropLogs(r.Context(), name)
	g.log.Info("deleted", "function", name)
	w.WriteHeader(http.StatusNoContent)
}

func (g *Gateway) registryError(w http.ResponseWriter, name string, err error) {
	switch {
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, apiError{Error: err.Error() + ": see `kiln list` for what is deployed", Function: name})
	case errors.Is(err, registry.ErrInvalidName):
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error(), Function: name})
	default:
		writeError(w, http.StatusServiceUnavailable, apiError{Error: "the function registry is unavailable: " + err.Error(), Function: name})
	}
}

// HeaderVersion names the version that served an invocation: with a split
// alias the caller cannot otherwise tell which side of the canary it hit.
const HeaderVersion = "X-Kiln-Version"

// maxAliasBody bounds the JSON body of alias and rollback requests.
const maxAliasBody = 64 << 10

func (g *Gateway) registerVersionRoutes() {
	g.mux.HandleFunc("GET /system/functions/{name}/versions", g.versions)
	g.mux.HandleFunc("GET /system/functions/{name}/aliases", g.aliases)
	g.mux.HandleFunc("GET /system/functions/{name}/aliases/{alias}", g.getAlias)
	g.mux.HandleFunc("PUT /system/functions/{name}/aliases/{alias}", g.putAlias)
	g.mux.HandleFunc("DELETE /system/functions/{name}/aliases/{alias}", g.deleteAlias)
	g.mux.HandleFunc("POST /system/functions/{name}/rollback", g.rollback)
	for path, allow := range map[string]string{
		"/system/functions/{name}/versions":        "GET",
		"/system/functions/{name}/aliases":         "GET",
		"/system/functions/{name}/aliases/{alias}": "GET, PUT, DELETE",
		"/system/functions/{name}/rollback":        "POST",
	} {
		g.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, apiError{Error: r.Method + " " + r.URL.Path + " is not supported: use " + allow})
		})
	}
}

// ParseFunctionRef splits the NAME[@REF] segment of an invocation path,
// where REF is an alias or a version number. It checks only REF's form (a
// malformed REF is the caller's mistake, 400); the name is checked by the
// lookup (an impossible name is simply not deployed, 404).
func ParseFunctionRef(seg string) (name, ref string, err error) {
	name, ref, at := strings.Cut(seg, "@")
	if !at {
		return name, "", nil
	}
	if ref == "" {
		return name, "", fmt.Errorf("%q names nothing after '@': use NAME@ALIAS (e.g. %s@prod) or NAME@VERSION (e.g. %s@3)", seg, name, name)
	}
	if strings.Trim(ref, "0123456789") == "" {
		if v, err := strconv.ParseUint(ref, 10, 64); err != nil || v == 0 {
			return name, "", fmt.Errorf("%q: version %s does not exist: versions are numbered from 1", seg, ref)
		}
		return name, ref, nil
	}
	if !registry.ValidName(ref) {
		return name, "", fmt.Errorf("%q: %q is not an alias name: aliases are 1-63 characters of a-z, 0-9 and '-'", seg, ref)
	}
	return name, ref, nil
}

// resolve finds the version one invocation of name@ref runs, picking by
// weight when ref is an alias that splits traffic. On failure code is the
// HTTP status and msg says what is missing and what to do.
func (g *Gateway) resolve(ctx context.Context, name, ref string) (fn registry.Function, code int, msg string) {
	route, err := g.cfg.Registry.Resolve(ctx, name, ref)
	switch {
	case err == nil:
		return route.Pick(g.randN(100)), 0, ""
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalidName):
		if ref != "" {
			// Say which half is missing: the function, or what ref names.
			if _, err := g.cfg.Registry.GetFunction(ctx, name, ""); err == nil {
				if strings.Trim(ref, "0123456789") == "" {
					return fn, http.StatusNotFound, fmt.Sprintf("function %q has no version %s: list its versions with `kiln versions %s`", name, ref, name)
				}
				return fn, http.StatusNotFound, fmt.Sprintf("function %q has no alias %q: list its aliases with `kiln alias %s`, or create it with `kiln alias %s %s VERSION`", name, ref, name, name, ref)
			}
		}
		return fn, http.StatusNotFound, fmt.Sprintf("function %q is not deployed: deploy it with `kiln deploy %s --binary FILE`, or list deployed functions with `kiln list`", name, name)
	default:
		g.log.Error("registry lookup failed", "function", name, "ref", ref, "err", err)
		return fn, http.StatusServiceUnavailable, "the function registry is unavailable, retry shortly: " + err.Error()
	}
}

// randN is uniform in [0, n): Config.RandN, else math/rand/v2.
func (g *Gateway) randN(n int) int {
	if g.cfg.RandN != nil {
		return g.cfg.RandN(n)
	}
	return rand.IntN(n)
}

// invokePath is what follows /prefix/NAME[@REF] in an escaped request
// path, "/" when nothing does.
func invokePath(escaped, prefix string) string {
	rest := strings.TrimPrefix(escaped, prefix)
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[i:]
	}
	return "/"
}

// VersionList is the answer of GET /system/functions/{name}/versions.
type VersionList struct {
	Name     string              `json:"name"`
	Versions []registry.Function `json:"versions"`
	Aliases  []registry.Alias    `json:"aliases"`
}

func (g *Gateway) versions(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	vs, err := g.cfg.Registry.Versions(r.Context(), name)
	if err != nil {
		g.aliasError(w, name, err)
		return
	}
	as, err := g.cfg.Registry.Aliases(r.Context(), name)
	if err != nil {
		g.aliasError(w, name, err)
		return
	}
	writeJSON(w, http.StatusOK, VersionList{Name: name, Versions: vs, Aliases: as})
}

func (g *Gateway) aliases(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	as, err := g.cfg.Registry.Aliases(r.Context(), name)
	if err != nil {
		g.aliasError(w, name, err)
		return
	}
	writeJSON(w, http.StatusOK, as)
}

func (g *Gateway) getAlias(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	a, err := g.cfg.Registry.GetAlias(r.Context(), name, r.PathValue("alias"))
	if err != nil {
		g.aliasError(w, name, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// AliasRequest is the body of PUT /system/functions/{name}/aliases/{alias}:
// either one version, or versions with weights in percent.
type AliasRequest struct {
	Version  *uint64           `json:"version,omitempty"`
	Versions []registry.Target `json:"versions,omitempty"`
}

func (g *Gateway) putAlias(w http.ResponseWriter, r *http.Request) {
	name, alias := r.PathValue("name"), r.PathValue("alias")
	var req AliasRequest
	if !readJSONBody(w, r, &req, `{"version": 3} or {"versions": [{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]}`) {
		return
	}
	var to []registry.Target
	switch {
	case req.Version != nil && req.Versions != nil:
		writeError(w, http.StatusBadRequest, apiError{Error: `give either "version" or "versions", not both`, Function: name})
		return
	case req.Version != nil:
		to = []registry.Target{{Version: *req.Version}}
	case req.Versions != nil:
		to = req.Versions
	default:
		writeError(w, http.StatusBadRequest, apiError{Error: `no version given: send {"version": 3} or {"versions": [{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]}`, Function: name})
		return
	}
	a, err := g.cfg.Registry.SetAlias(r.Context(), name, alias, to)
	if err != nil {
		g.aliasError(w, name, err)
		return
	}
	g.log.Info("alias set", "function", name, "alias", alias, "to", registry.FormatTargets(a.Targets))
	writeJSON(w, http.StatusOK, a)
}

func (g *Gateway) deleteAlias(w http.ResponseWriter, r *http.Request) {
	name, alias := r.PathValue("name"), r.PathValue("alias")
	if err := g.cfg.Registry.DeleteAlias(r.Context(), name, alias); err != nil {
		g.aliasError(w, name, err)
		return
	}
	g.log.Info("alias deleted", "function", name, "alias", alias)
	w.WriteHeader(http.StatusNoContent)
}

// RollbackRequest is the body of POST /system/functions/{name}/rollback.
type RollbackRequest struct {
	Alias string `json:"alias"`
}

func (g *Gateway) rollback(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req RollbackRequest
	if !readJSONBody(w, r, &req, `{"alias": "prod"}`) {
		return
	}
	if req.Alias == "" {
		writeError(w, http.StatusBadRequest, apiError{Error: `no alias given: send {"alias": "prod"}`, Function: name})
		return
	}
	a, err := g.cfg.Registry.RollbackAlias(r.Context(), name, req.Alias)
	if err != nil {
		g.aliasError(w, name, err)
		return
	}
	g.log.Info("alias rolled back", "function", name, "alias", req.Alias, "to", registry.FormatTargets(a.Targets))
	writeJSON(w, http.StatusOK, a)
}

// readJSONBody decodes exactly one JSON object with known fields into v, or
// answers 400 showing the expected shape.
func readJSONBody(w http.ResponseWriter, r *http.Request, v any, shape string) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAliasBody))
	dec.DisallowUnknownFields()
	var tooBig *http.MaxBytesError
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); errors.As(terr, &tooBig) {
			err = terr
		} else if terr != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	if err != nil {
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, apiError{Error: fmt.Sprintf("body larger than %d bytes: send %s", maxAliasBody, shape)})
			return false
		}
		if errors.Is(err, io.EOF) {
			err = errors.New("empty body")
		}
		writeError(w, http.StatusBadRequest, apiError{Error: "bad JSON body (" + err.Error() + "): send " + shape})
		return false
	}
	return true
}

// aliasError answers a registry error of a version or alias request.
func (g *Gateway) aliasError(w http.ResponseWriter, name string, err error) {
	switch {
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, apiError{Error: err.Error() + fmt.Sprintf(": see `kiln versions %s` for its versions and aliases, `kiln list` for functions", name), Function: name})
	case errors.Is(err, registry.ErrInvalidName), errors.Is(err, registry.ErrInvalidRoute):
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error(), Function: name})
	case errors.Is(err, registry.ErrConflict):
		writeError(w, http.StatusConflict, apiError{Error: err.Error(), Function: name})
	default:
		g.log.Error("registry request failed", "function", name, "err", err)
		writeError(w, http.StatusServiceUnavailable, apiError{Error: "the function registry is unavailable, retry shortly: " + err.Error(), Function: name})
	}
}
