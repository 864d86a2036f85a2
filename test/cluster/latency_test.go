package cluster

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kilnfaas/kiln/internal/rolecert"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// TestHopLatency measures, in one run against one warm instance, a sync
// call three ways: straight to the agent (gRPC Agent.Invoke), through the
// scheduler (gRPC Scheduler.Invoke), and through the gateway (HTTP), each
// between separate processes on 127.0.0.1. The differences are what each
// hop adds. It runs only with KILN_BENCH=1:
//
//	KILN_BENCH=1 go test -run TestHopLatency -v ./cluster/
func TestHopLatency(t *testing.T) {
	if os.Getenv("KILN_BENCH") != "1" {
		t.Skip("a measurement, not a test: set KILN_BENCH=1")
	}
	c := newCluster(t, 1, 1, 3*time.Minute)
	g := c.Gateways[0]
	c.deploy(g, "sleepy")
	code, body := c.get(g + "/system/functions/sleepy")
	var fn struct {
		Digest      string `json:"digest"`
		MemoryBytes uint64 `json:"memory_bytes"`
		TimeoutMs   int64  `json:"timeout_ms"`
		Version     uint64 `json:"version"`
	}
	if err := json.Unmarshal(body, &fn); code != http.StatusOK || err != nil || fn.Digest == "" {
		t.Fatalf("describe: %d %s", code, body)
	}
	req := &kilnv1.InvokeRequest{
		Function: &kilnv1.FunctionSpec{Name: "sleepy", Version: fn.Version, ImageDigest: fn.Digest, Kind: kilnv1.Kind_KIND_SERVE,
			MemoryBytes: fn.MemoryBytes, TimeoutMs: fn.TimeoutMs},
		Method: "POST", Path: "/", Body: []byte("x"),
	}
	// The test calls the agent as the scheduler does, and the scheduler
	// as a gateway does: with their certificates.
	dial := func(a string, as, want rolecert.Identity) *grpc.ClientConn {
		cert, key := rolecert.CertFiles(c.CADir, as)
		creds, err := rolecert.Load(rolecert.Files{CA: filepath.Join(c.CADir, rolecert.CACertFile), Cert: cert, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(a, grpc.WithTransportCredentials(creds.Client(want)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	agentAddr := c.agentArgs["node1"][slices.Index(c.agentArgs["node1"], "--listen")+1]
	schedID := rolecert.Identity{Role: rolecert.RoleScheduler}
	agent := kilnv1.NewAgentClient(dial(agentAddr, schedID, rolecert.Identity{Role: rolecert.RoleAgent, Node: "node1"}))
	sched := kilnv1.NewSchedulerClient(dial(c.SchedAddr, rolecert.Identity{Role: rolecert.RoleGateway}, schedID))
	hc := &http.Client{Timeout: 10 * time.Second}

	ways := []struct {
		name string
		call func() error
	}{
		{"agent (gRPC)", func() error {
			r, err := agent.Invoke(context.Background(), req)
			if err == nil && r.Outcome != kilnv1.Outcome_OUTCOME_OK {
				t.Fatalf("agent: %v", r)
			}
			return err
		}},
		{"scheduler → agent (gRPC)", func() error {
			r, err := sched.Invoke(context.Background(), req)
			if err == nil && r.Outcome != kilnv1.Outcome_OUTCOME_OK {
				t.Fatalf("scheduler: %v", r)
			}
			return err
		}},
		{"gateway → scheduler → agent (HTTP)", func() error {
			resp, err := hc.Post(g+"/function/sleepy", "text/plain", strings.NewReader("x"))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("gateway: %d", resp.StatusCode)
				}
			}
			return err
		}},
	}
	const rounds = 500
	took := make([][]time.Duration, len(ways))
	for i := range rounds + 20 {
		for w, way := range ways {
			t0 := time.Now()
			if err := way.call(); err != nil {
				t.Fatalf("%s: %v", way.name, err)
			}
			if i >= 20 { // the first rounds warm connections and the instance
				took[w] = append(took[w], time.Since(t0))
			}
		}
	}
	pct := func(d []time.Duration, p float64) time.Duration { return d[int(p*float64(len(d)-1))] }
	var medians []time.Duration
	for w, way := range ways {
		slices.Sort(took[w])
		medians = append(medians, pct(took[w], 0.5))
		t.Logf("%-36s median %8v  p90 %8v  p99 %8v  (%d calls)", way.name, pct(took[w], 0.5), pct(took[w], 0.9), pct(took[w], 0.99), len(took[w]))
	}
	t.Logf("added by the scheduler hop: %v; by the gateway hop: %v; gateway + scheduler over the agent: %v (medians)",
		medians[1]-medians[0], medians[2]-medians[1], medians[2]-medians[0])
}
