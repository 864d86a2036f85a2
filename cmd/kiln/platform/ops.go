package platform

// What every role serves beside its work: /healthz (the process is alive:
// 200 as long as it can answer at all), /readyz (200 only when what it
// depends on answers now; a JSON body names each check) and /metrics.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// probeTimeout bounds each readiness check.
const probeTimeout = 2 * time.Second

// check is one dependency /readyz probes.
type check struct {
	name  string
	probe func(ctx context.Context) error
}

// opsHandler serves /healthz, /readyz and /metrics, plus extra routes, and
// hands everything else to next (nil: a JSON 404).
func (p *Parts) opsHandler(role string, checks []check, extra map[string]http.HandlerFunc, next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		results := make([]string, len(checks))
		var wg sync.WaitGroup
		for i, c := range checks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(req.Context(), probeTimeout)
				defer cancel()
				if err := c.probe(ctx); err != nil {
					results[i] = err.Error()
				} else {
					results[i] = "ok"
				}
			}()
		}
		wg.Wait()
		body := struct {
			Role   string            `json:"role"`
			Ready  bool              `json:"ready"`
			Error  string            `json:"error,omitempty"`
			Checks map[string]string `json:"checks"`
		}{Role: role, Ready: true, Checks: map[string]string{}}
		var failed []string
		for i, c := range checks {
			body.Checks[c.name] = results[i]
			if results[i] != "ok" {
				body.Ready = false
				failed = append(failed, c.name+": "+results[i])
			}
		}
		code := http.StatusOK
		if !body.Ready {
			sort.Strings(failed)
			code = http.StatusServiceUnavailable
			body.Error = fmt.Sprintf("%s not ready: %v", role, failed)
		}
		writeJSON(w, code, body)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.Metrics, promhttp.HandlerOpts{}))
	for pattern, h := range extra {
		mux.HandleFunc(pattern, h)
	}
	if next != nil {
		mux.Handle("/", next)
	} else {
		mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
			writeJSON(w, http.StatusNotFound, map[string]string{
				"error": "no such endpoint " + req.URL.Path + " on the " + role + ": it serves /healthz, /readyz and /metrics"})
		})
	}
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// schedulerCheck asks the scheduler's gRPC health service.
func schedulerCheck(conn *grpc.ClientConn) check {
	hc := healthpb.NewHealthClient(conn)
	return check{"scheduler", func(ctx context.Context) error {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: kilnv1.Scheduler_ServiceDesc.ServiceName})
		if err != nil {
			return fmt.Errorf("%s unreachable: %v", conn.Target(), err)
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("%s is %v", conn.Target(), resp.Status)
		}
		return nil
	}}
}

func natsCheck(nc *nats.Conn) check {
	return check{"nats", func(ctx context.Context) error {
		if err := nc.FlushWithContext(ctx); err != nil {
			return fmt.Errorf("%s: %v (%v)", nc.ConnectedUrlRedacted(), err, nc.Status())
		}
		return nil
	}}
}
