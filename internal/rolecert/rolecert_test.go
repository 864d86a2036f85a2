package rolecert

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestInitIssueLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{CAKeyFile: 0o600, CACertFile: 0o644, ".": 0o700} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, %v; want %v", name, fi.Mode().Perm(), err, mode)
		}
	}
	if err := Init(dir); !errors.Is(err, ErrExists) {
		t.Fatalf("Init over a CA: %v", err)
	}
	id := Identity{Role: RoleAgent, Node: "node-1.example"}
	cert, key, err := Issue(dir, Request{Identity: id, Hosts: []string{"10.0.0.7", "agent1"}})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v %v", fi.Mode(), err)
	}
	c, err := Load(Files{CA: filepath.Join(dir, CACertFile), Cert: cert, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if c.Identity != id {
		t.Fatalf("identity %v", c.Identity)
	}
	raw, _ := os.ReadFile(cert)
	blk, _ := pem.Decode(raw)
	leaf, _ := x509.ParseCertificate(blk.Bytes)
	if leaf.URIs[0].String() != "kiln://agent/node-1.example" || len(leaf.IPAddresses) != 1 || leaf.DNSNames[0] != "agent1" {
		t.Fatalf("SANs: %v %v %v", leaf.URIs, leaf.IPAddresses, leaf.DNSNames)
	}

	// Another CA's certificate is refused at load.
	other := t.TempDir()
	if err := Init(other); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(Files{CA: filepath.Join(other, CACertFile), Cert: cert, Key: key}); !errors.Is(err, ErrBadFiles) {
		t.Fatalf("Load with another CA: %v", err)
	}
	if _, err := Load(Files{CA: filepath.Join(dir, CACertFile), Cert: cert}); !errors.Is(err, ErrBadFiles) {
		t.Fatalf("Load without a key: %v", err)
	}
}

func TestIssueRefuses(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	for _, id := range []Identity{
		{Role: "admin"},
		{Role: RoleAgent},
		{Role: RoleAgent, Node: "a/b"},
		{Role: RoleAgent, Node: "../x"},
		{Role: RoleGateway, Node: "n1"},
	} {
		if _, _, err := Issue(dir, Request{Identity: id}); !errors.Is(err, ErrBadRequest) {
			t.Errorf("Issue(%+v): %v", id, err)
		}
	}
	if _, _, err := Issue(t.TempDir(), Request{Identity: Identity{Role: RoleGateway}}); !errors.Is(err, ErrBadFiles) {
		t.Errorf("Issue without a CA: %v", err)
	}
}

func TestPolicy(t *testing.T) {
	gw, sched, agent := Identity{Role: RoleGateway}, Identity{Role: RoleScheduler}, Identity{Role: RoleAgent, Node: "n1"}
	for _, tc := range []struct {
		p      Policy
		method string
		id     Identity
		ok     bool
	}{
		{SchedulerPolicy, "/kiln.v1.Scheduler/Invoke", gw, true},
		{SchedulerPolicy, "/kiln.v1.Scheduler/Invoke", agent, false},
		{SchedulerPolicy, "/kiln.v1.Scheduler/Invoke", sched, false},
		{SchedulerPolicy, "/kiln.v1.Scheduler/ListNodes", gw, true},
		{SchedulerPolicy, "/kiln.v1.Scheduler/ListNodes", agent, false},
		{SchedulerPolicy, "/kiln.v1.Scheduler/Connect", agent, true},
		{SchedulerPolicy, "/kiln.v1.Scheduler/Connect", gw, false},
		{SchedulerPolicy, "/kiln.v1.Scheduler/Later", gw, false}, // a method nobody opened
		{SchedulerPolicy, "/grpc.health.v1.Health/Check", gw, true},
		{SchedulerPolicy, "/grpc.health.v1.Health/Watch", agent, true},
		{AgentPolicy, "/kiln.v1.Agent/Invoke", sched, true},
		{AgentPolicy, "/kiln.v1.Agent/Capacity", sched, true},
		{AgentPolicy, "/kiln.v1.Agent/Invoke", gw, false},
		{AgentPolicy, "/kiln.v1.Agent/Invoke", agent, false},
		{AgentPolicy, "/grpc.health.v1.Health/Check", sched, false},
		{AgentPolicy, "/kiln.v1.Agent", sched, false},
	} {
		err := tc.p.Allow(tc.method, tc.id)
		if (err == nil) != tc.ok || (err != nil && status.Code(err) != codes.PermissionDenied) {
			t.Errorf("%s by %s: %v, want ok=%v", tc.method, tc.id, err, tc.ok)
		}
	}
}
