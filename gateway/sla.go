package gateway

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/registry"
	"github.com/kilnfaas/kiln/store/slaledger"
)

// SLAConfig is what the gateway needs for SLAs (Config.SLA).
type SLAConfig struct {
	// Ledger records invocations of functions with an SLA and backs
	// /system/sla; nil: no ledger, /system/sla answers 503.
	Ledger *slaledger.Recorder
	// Nodes is the scheduler's view of the cluster, its answer to the
	// ListNodes RPC (the contract between the roles, so the gateway needs
	// nothing of the scheduler's own types): warm instances are counted
	// from it. nil, or an error: warm_instances is null (unknown).
	Nodes func(ctx context.Context) (*kilnv1.ListNodesResponse, error)
}

// nodesTimeout bounds one look at the scheduler's view: a report waits no
// longer for warm_instances, which is then null.
const nodesTimeout = time.Second

// SLAReport is one function's entry of GET /system/sla (docs/SLA.md).
type SLAReport struct {
	Function   string  `json:"function"`
	Version    uint64  `json:"version"` // the latest version, whose SLA is shown
	DeadlineMs int64   `json:"deadline_ms"`
	Target     float64 `json:"target"`
	slaledger.Summary
	// WarmInstances (idle and busy, every node) of the latest version's
	// image; null where the gateway cannot see the scheduler's pools
	// (SLAConfig.Nodes).
	WarmInstances *int `json:"warm_instances"`
}

// SLAList is the answer of GET /system/sla: every function with an SLA.
type SLAList struct {
	Functions []SLAReport `json:"functions"`
	// RecordsDropped counts invocations this gateway could not record
	// because the ledger was too slow (also kiln_sla_ledger_dropped_total).
	RecordsDropped uint64 `json:"records_dropped"`
}

// registerSLA adds the SLA routes and the ledger's drop counter.
func (g *Gateway) registerSLA() {
	g.mux.HandleFunc("GET /system/sla", g.slaList)
	g.mux.HandleFunc("GET /system/sla/{name}", g.slaOne)
	if g.cfg.SLA.Ledger == nil || g.cfg.Registerer == nil {
		return
	}
	rec := g.cfg.SLA.Ledger
	err := g.cfg.Registerer.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "kiln_sla_ledger_dropped_total",
		Help: "Invocations the gateway could not record in the SLA ledger (queue full or store failing); Prometheus' kiln_sla_* counters still have them.",
	}, func() float64 { return float64(rec.Dropped()) }))
	if err != nil {
		g.log.Warn("SLA ledger: drop counter not registered", "err", err)
	}
}

// recordSLA hands inv to the SLA ledger when its function has an SLA. It
// never blocks: a full queue drops the record and counts it. Good means
// exactly what kiln_sla_good_total counts: outcome ok within the deadline.
func (g *Gateway) recordSLA(inv *invocation) {
	if g.cfg.SLA.Ledger == nil || inv.Fn.SLA.DeadlineMs <= 0 || inv.Fn.SLA.Target <= 0 {
		return
	}
	rec := slaledger.Record{Function: inv.Fn.Name, At: time.Now(), Error: true}
	if inv.Err == nil {
		ok := inv.Resp.GetOutcome() == kilnv1.Outcome_OUTCOME_OK
		deadline := time.Duration(inv.Fn.SLA.DeadlineMs) * time.Millisecond
		rec.Error = !ok
		rec.Good = ok && inv.Total.Seconds() <= deadline.Seconds()
		switch inv.Resp.GetStart() {
		case kilnv1.StartKind_START_WARM:
			rec.Start = slaledger.StartWarm
		case kilnv1.StartKind_START_RESTORE:
			rec.Start = slaledger.StartRestore
		case kilnv1.StartKind_START_BOOT:
			rec.Start = slaledger.StartBoot
		}
	}
	g.cfg.SLA.Ledger.Record(rec)
}

func (g *Gateway) slaLedger(w http.ResponseWriter) slaledger.Store {
	if g.cfg.SLA.Ledger == nil {
		writeError(w, http.StatusServiceUnavailable, apiError{Error: "this gateway keeps no SLA ledger (started without one)"})
		return nil
	}
	return g.cfg.SLA.Ledger.Store()
}

func (g *Gateway) slaReport(ctx context.Context, s slaledger.Store, f registry.Function, now time.Time) (SLAReport, error) {
	sum, err := slaledger.Summarize(ctx, s, f.Name, f.SLA.Target, now)
	if err != nil {
		return SLAReport{}, err
	}
	rep := SLAReport{Function: f.Name, Version: f.Version, DeadlineMs: f.SLA.DeadlineMs, Target: f.SLA.Target, Summary: sum}
	if g.cfg.SLA.Nodes != nil {
		ctx, cancel := context.WithTimeout(ctx, nodesTimeout)
		defer cancel()
		if nodes, err := g.cfg.SLA.Nodes(ctx); err == nil {
			n := 0
			for _, node := range nodes.GetNodes() {
				for _, w := range node.GetWarm() {
					if w.GetImageDigest() == f.ImageDigest {
						n += int(w.GetIdle()) + int(w.GetBusy())
					}
				}
			}
			rep.WarmInstances = &n
		}
	}
	return rep, nil
}

func (g *Gateway) slaList(w http.ResponseWriter, r *http.Request) {
	s := g.slaLedger(w)
	if s == nil {
		return
	}
	fs, err := g.cfg.Registry.ListFunctions(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, apiError{Error: "registry unavailable: " + err.Error()})
		return
	}
	out := SLAList{Functions: []SLAReport{}, RecordsDropped: g.cfg.SLA.Ledger.Dropped()}
	now := time.Now()
	for _, f := range fs {
		if f.SLA.DeadlineMs <= 0 {
			continue
		}
		rep, err := g.slaReport(r.Context(), s, f, now)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, apiError{Error: "SLA ledger unavailable: " + err.Error(), Function: f.Name})
			return
		}
		out.Functions = append(out.Functions, rep)
	}
	writeJSON(w, http.StatusOK, out)
}

func (g *Gateway) slaOne(w http.ResponseWriter, r *http.Request) {
	s := g.slaLedger(w)
	if s == nil {
		return
	}
	name := r.PathValue("name")
	f, err := g.cfg.Registry.GetFunction(r.Context(), name, "")
	if err != nil {
		g.registryError(w, name, err)
		return
	}
	if f.SLA.DeadlineMs <= 0 {
		writeError(w, http.StatusNotFound, apiError{Function: name,
			Error: fmt.Sprintf("function %q has no SLA: deploy it with a deadline and a target (kiln deploy %s … --deadline 50ms --target 99.9)", name, name)})
		return
	}
	rep, err := g.slaReport(r.Context(), s, f, time.Now())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, apiError{Error: "SLA ledger unavailable: " + err.Error(), Function: name})
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
