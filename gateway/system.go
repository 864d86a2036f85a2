package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

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
	if !g.readJSONBody(w, r, &req, `{"version": 3} or {"versions": [{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]}`) {
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
	if !g.readJSONBody(w, r, &req, `{"alias": "prod"}`) {
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
// answers 400 showing the expected shape (408 when it arrives too slowly).
func (g *Gateway) readJSONBody(w http.ResponseWriter, r *http.Request, v any, shape string) bool {
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
		if bodyTimedOut(err) {
			writeError(w, http.StatusRequestTimeout, apiError{Error: g.slowBody()})
			return false
		}
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
