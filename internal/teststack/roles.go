package teststack

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/internal/redistest"
	"github.com/kilnfaas/kiln/internal/rolecert/rolecerttest"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
)

// RolesOptions say how to start the cluster roles.
type RolesOptions struct {
	// KernelPath is the gateway's guest kernel (under the process runtime
	// any ELF stands in); required.
	KernelPath string
	// Node is the agent's name; "" → "n1".
	Node string
	// AgentMemory is the agent's guest memory; 0 → 1 GiB.
	AgentMemory uint64
	// HeartbeatInterval; 0 → 200 ms, so a test sees the agent soon.
	HeartbeatInterval time.Duration
	// Runtime of the agent: platform.RuntimeProcess ("" too) or RuntimeKVM.
	Runtime string
}

// Roles are the three cluster roles (`kiln scheduler`, `kiln agent`,
// `kiln gateway`) started in this process through the very functions those
// commands call, on a real redis-server and nats-server, each on its own
// 127.0.0.1 addresses, speaking mTLS on certificates of a CA made for the
// test by the code of `kiln ca`.
type Roles struct {
	Scheduler, Agent, Gateway *platform.Role
	RedisURL, NATSURL         string
	// CA signed the roles' certificates; a test issues more with it.
	CA *rolecerttest.CA
}

// StartRoles starts the roles and waits until every one is ready (the
// agent has registered, the gateway reaches Redis, NATS and the
// scheduler). The test's end stops them.
func StartRoles(t testing.TB, o RolesOptions) *Roles {
	t.Helper()
	if o.Node == "" {
		o.Node = "n1"
	}
	if o.AgentMemory == 0 {
		o.AgentMemory = 1 << 30
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = 200 * time.Millisecond
	}
	if o.Runtime == "" {
		o.Runtime = platform.RuntimeProcess
	}
	r := &Roles{RedisURL: redistest.Start(t, "the cluster roles"), NATSURL: testnet.NATS(t), CA: rolecerttest.New(t)}
	ctx := context.Background()
	var err error
	r.Scheduler, err = platform.StartScheduler(ctx, platform.SchedulerConfig{GRPCAddr: testnet.FreeAddr(t), HTTPAddr: testnet.FreeAddr(t),
		HeartbeatInterval: o.HeartbeatInterval, GRPCSecurity: platform.GRPCSecurity{TLS: r.CA.Scheduler(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Scheduler.Close() })
	r.Agent, err = platform.StartAgent(ctx, platform.AgentConfig{Node: o.Node, GRPCAddr: testnet.FreeAddr(t), HTTPAddr: testnet.FreeAddr(t),
		Scheduler: r.Scheduler.GRPCAddr, NATSURL: r.NATSURL, DataDir: filepath.Join(t.TempDir(), "agent"), MemoryBytes: o.AgentMemory,
		Runtime: o.Runtime, GRPCSecurity: platform.GRPCSecurity{TLS: r.CA.Agent(t, o.Node)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Agent.Close() })
	r.Gateway, err = platform.StartGateway(ctx, platform.GatewayConfig{HTTPAddr: testnet.FreeAddr(t), RedisURL: r.RedisURL,
		NATSURL: r.NATSURL, Scheduler: r.Scheduler.GRPCAddr, KernelPath: o.KernelPath,
		GRPCSecurity: platform.GRPCSecurity{TLS: r.CA.Gateway(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Gateway.Close() })
	WaitReady(t, r.Scheduler.HTTPURL, r.Agent.HTTPURL, r.Gateway.HTTPURL)
	return r
}

// WaitReady waits up to 20 s until each role's /readyz answers 200.
func WaitReady(t testing.TB, urls ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, u := range urls {
		for {
			r, err := http.Get(u + "/readyz")
			if err == nil {
				b, _ := io.ReadAll(r.Body)
				r.Body.Close()
				if r.StatusCode == 200 {
					break
				}
				err = fmt.Errorf("%d %s", r.StatusCode, b)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not ready: %v", u, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
