package gateway

import (
	"errors"
	"net/http"

	"github.com/kilnfaas/kiln/registry"
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
