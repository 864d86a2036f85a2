package cluster

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A rogue `kiln agent` started under the real node's name (issue 13,
// finding 3: it received the node's calls, bodies and headers, and
// answered them) gets nothing: with a certificate of another node it
// cannot start, with a second valid certificate for the same name its
// Register is refused while the real node is connected, and without one
// the scheduler does not talk to it at all. The real node keeps its
// name, its address and its calls throughout.
func TestRogueAgentGetsNoCalls(t *testing.T) {
	c := newCluster(t, 1, 1, 2*time.Minute)
	g := c.Gateways[0]
	c.deploy(g, "sleepy")
	realAddr := c.agentArgs["node1"][slices.Index(c.agentArgs["node1"], "--listen")+1]

	// A second certificate for node1, signed by the cluster's CA (say,
	// one issued for a machine being replaced), in a copy of the CA's
	// directory so that the real agent's files stay as they are.
	rogueCA := filepath.Join(c.dir, "rogue-pki")
	os.MkdirAll(rogueCA, 0o700)
	for _, f := range []string{"ca.crt", "ca.key"} {
		b, err := os.ReadFile(filepath.Join(c.CADir, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(rogueCA, f), b, 0o600)
	}
	c.caRun("issue", "--dir", rogueCA, "--role", "agent", "--node", "node1")
	rogueArgs := func(name string, tls ...string) []string {
		return append([]string{"agent", "--name", "node1", "--runtime", "process", "--mem", "256M",
			"--listen", addr(freePort(t)), "--http", addr(freePort(t)),
			"--scheduler", c.SchedAddr, "--nats", c.NATSURL, "--data", filepath.Join(c.dir, name)}, tls...)
	}
	rogue := c.start("rogue", bins.kiln, rogueArgs("rogue", "--tls-ca", filepath.Join(c.CADir, "ca.crt"),
		"--tls-cert", filepath.Join(rogueCA, "agent-node1.crt"), "--tls-key", filepath.Join(rogueCA, "agent-node1.key"))...)
	plain := c.start("rogue-plain", bins.kiln, rogueArgs("rogue-plain", "--insecure-grpc")...)
	c.eventually(20*time.Second, "the rogues' registrations refused", func() bool {
		a, _ := os.ReadFile(rogue.log)
		b, _ := os.ReadFile(plain.log)
		return strings.Contains(string(a), "is connected under another identity") &&
			strings.Contains(string(b), "scheduler stream ended")
	})

	for i := range 10 {
		r := c.invoke(g, "sleepy", 0, fmt.Sprint(i))
		if r.err != nil || r.code != http.StatusOK || r.node != "node1" || r.body != fmt.Sprintf("hello, %d", i) {
			t.Fatalf("call %d while the rogues run: %d %q node %q %v", i, r.code, r.body, r.node, r.err)
		}
	}
	code, body := c.get(c.SchedHTTP + "/nodes")
	var nodes []struct{ Name, Address string }
	if json.Unmarshal(body, &nodes) != nil || code != http.StatusOK || len(nodes) != 1 || nodes[0].Address != realAddr {
		t.Fatalf("the scheduler's nodes: %d %s (the real node1 is at %s)", code, body, realAddr)
	}
	// A certificate of another node does not even start under this name.
	c.caRun("issue", "--dir", rogueCA, "--role", "agent", "--node", "node2")
	other := c.start("rogue-other", bins.kiln, rogueArgs("rogue-other", "--tls-ca", filepath.Join(c.CADir, "ca.crt"),
		"--tls-cert", filepath.Join(rogueCA, "agent-node2.crt"), "--tls-key", filepath.Join(rogueCA, "agent-node2.key"))...)
	select {
	case <-other.done:
	case <-time.After(10 * time.Second):
		t.Fatal("an agent named node1 with node2's certificate is still running")
	}
	if b, _ := os.ReadFile(other.log); !strings.Contains(string(b), `but the certificate`) {
		t.Fatalf("the agent with another node's certificate: %s", b)
	}
}
