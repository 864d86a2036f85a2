package platform_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/rolecert"
	"github.com/kilnfaas/kiln/internal/rolecert/rolecerttest"
	"github.com/kilnfaas/kiln/internal/teststack"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// dialWith opens a gRPC client to addr with creds.
func dialWith(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// caller is who calls a role in expectRefused, and the code it must get.
type caller struct {
	who   string
	creds credentials.TransportCredentials
	want  codes.Code
}

// expectRefused makes call (named what) at addr as each caller and checks
// the code each gets.
func expectRefused(t *testing.T, addr, what string, call func(context.Context, *grpc.ClientConn) error, callers []caller) {
	t.Helper()
	for _, c := range callers {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := call(ctx, dialWith(t, addr, c.creds))
		cancel()
		if status.Code(err) != c.want {
			t.Errorf("%s: %s answered %v; want %v", c.who, what, err, c.want)
		}
	}
}

// register opens a Connect stream on conn, sends Register for node and
// returns the stream and the error of the answer.
func register(conn *grpc.ClientConn, node, addr string) (grpc.BidiStreamingClient[kilnv1.AgentMessage, kilnv1.SchedulerMessage], error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := kilnv1.NewSchedulerClient(conn).Connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	context.AfterFunc(ctx, cancel) // the stream ends with the test's cleanups
	if err := st.Send(&kilnv1.AgentMessage{Msg: &kilnv1.AgentMessage_Register{Register: &kilnv1.Register{
		Node: node, Address: addr, MemoryBytesTotal: 1 << 30}}}); err != nil {
		_, err = st.Recv() // the status is in Recv
		return st, err
	}
	_, err = st.Recv()
	return st, err
}

// The attack of issue 13, finding 3, against the real cluster roles: with
// an API key in place (HTTP answers 401), a local process calls the
// agent's gRPC directly to run a private function with env it injects,
// and registers with the scheduler under the real node's name to receive
// its calls. Under mTLS every such call is refused by who the caller's
// certificate says it is; the same calls with the right certificate go
// through, so the refusals are the checks' doing.
func TestRolesRefuseCallersWithoutTheirCertificate(t *testing.T) {
	roles := teststack.StartRoles(t, teststack.RolesOptions{KernelPath: staticProgram(t), Node: "n1"})
	gw := roles.Gateway.HTTPURL

	// A private function, deployed while no key exists (loopback), then
	// an API key: the HTTP API is closed.
	out := filepath.Join(t.TempDir(), "envfn")
	build := exec.Command("go", "build", "-o", out, "./testdata/envfn")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build testdata/envfn: %v\n%s", err, b)
	}
	prog, _ := os.ReadFile(out)
	if resp, b := httpDo(t, "POST", gw+"/system/functions?name=secret&kind=exec&memory=32M&timeout=20s&private=true", prog); resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, b)
	}
	resp, b := httpDo(t, "GET", gw+"/system/functions/secret", nil)
	var fn struct{ Digest string }
	if resp.StatusCode != 200 || json.Unmarshal(b, &fn) != nil || fn.Digest == "" {
		t.Fatalf("describe: %d %s", resp.StatusCode, b)
	}
	resp, b = httpDo(t, "POST", gw+"/system/keys", []byte(`{"name":"admin"}`))
	var key gateway.CreatedKey
	if resp.StatusCode != 201 || json.Unmarshal(b, &key) != nil {
		t.Fatalf("create key: %d %s", resp.StatusCode, b)
	}
	if resp, b := httpDo(t, "POST", gw+"/function/secret", []byte("x")); resp.StatusCode != 401 {
		t.Fatalf("private function without a key: %d %s", resp.StatusCode, b)
	}

	attack := &kilnv1.InvokeRequest{InvocationId: "attack", Body: []byte("x"), Function: &kilnv1.FunctionSpec{
		Name: "secret", ImageDigest: fn.Digest, Kind: kilnv1.Kind_KIND_EXEC, MemoryBytes: 32 << 20, TimeoutMs: 20000,
		Env: []string{"INJECTED=pwned"}}}
	ca := roles.CA
	caPool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(ca.CACert())
	caPool.AppendCertsFromPEM(caPEM)
	noCert := credentials.NewTLS(&tls.Config{RootCAs: caPool}) // trusts the CA, shows no certificate
	as := func(f rolecert.Files, want rolecert.Identity) credentials.TransportCredentials {
		return rolecerttest.Credentials(t, f).Client(want)
	}
	agentID := rolecert.Identity{Role: rolecert.RoleAgent, Node: "n1"}
	schedID := rolecert.Identity{Role: rolecert.RoleScheduler}
	otherCA := rolecerttest.New(t)

	t.Run("Agent.Invoke", func(t *testing.T) {
		expectRefused(t, roles.Agent.GRPCAddr, "Agent.Invoke", func(ctx context.Context, conn *grpc.ClientConn) error {
			_, err := kilnv1.NewAgentClient(conn).Invoke(ctx, attack)
			return err
		}, []caller{
			{"plaintext, as in the finding", insecure.NewCredentials(), codes.Unavailable},
			{"TLS without a certificate", noCert, codes.Unauthenticated},
			{"a gateway's certificate", as(ca.Gateway(t), agentID), codes.PermissionDenied},
			{"an agent's certificate", as(ca.Agent(t, "n2"), agentID), codes.PermissionDenied},
			{"a scheduler's certificate of another CA", as(otherCA.Scheduler(t), agentID), codes.Unavailable},
		})
		// The scheduler's certificate is what the agent answers: the
		// same request then runs, env and all.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := kilnv1.NewAgentClient(dialWith(t, roles.Agent.GRPCAddr, as(ca.Scheduler(t), agentID))).Invoke(ctx, attack)
		if err != nil || string(resp.Body) != "INJECTED=pwned" {
			t.Fatalf("the scheduler's own call: %v %v", resp, err)
		}
	})

	t.Run("Scheduler.Invoke", func(t *testing.T) {
		callers := []caller{
			{"plaintext", insecure.NewCredentials(), codes.Unavailable},
			{"TLS without a certificate", noCert, codes.Unauthenticated},
			{"an agent's certificate", as(ca.Agent(t, "n1"), schedID), codes.PermissionDenied},
		}
		expectRefused(t, roles.Scheduler.GRPCAddr, "Scheduler.Invoke", func(ctx context.Context, conn *grpc.ClientConn) error {
			_, err := kilnv1.NewSchedulerClient(conn).Invoke(ctx, attack)
			return err
		}, callers)
		expectRefused(t, roles.Scheduler.GRPCAddr, "Scheduler.ListNodes", func(ctx context.Context, conn *grpc.ClientConn) error {
			_, err := kilnv1.NewSchedulerClient(conn).ListNodes(ctx, &kilnv1.ListNodesRequest{})
			return err
		}, callers)
	})

	t.Run("Connect", func(t *testing.T) {
		expectRefused(t, roles.Scheduler.GRPCAddr, "Register as n1", func(_ context.Context, conn *grpc.ClientConn) error {
			_, err := register(conn, "n1", roles.Agent.GRPCAddr)
			return err
		}, []caller{
			{"plaintext", insecure.NewCredentials(), codes.Unavailable},
			{"TLS without a certificate", noCert, codes.Unauthenticated},
			{"a gateway's certificate", as(ca.Gateway(t), schedID), codes.PermissionDenied},
			// A rogue agent with a valid certificate for another name.
			{"node n2's certificate", as(ca.Agent(t, "n2"), schedID), codes.PermissionDenied},
			// A second certificate for n1 while n1 is connected: the
			// name is held under the first one's identity.
			{"a second certificate of n1", as(ca.Files(t, agentID), schedID), codes.AlreadyExists},
		})
		// n2's certificate registers n2 itself: Connect works for the
		// right identity.
		st, err := register(dialWith(t, roles.Scheduler.GRPCAddr, as(ca.Agent(t, "n2"), schedID)), "n2", "127.0.0.1:1")
		if err != nil {
			t.Fatalf("n2 registering as n2: %v", err)
		}
		st.CloseSend()
	})

	// The real node still has its name and its calls.
	resp, b = httpDo(t, "GET", roles.Scheduler.HTTPURL+"/nodes", nil)
	var nodes []struct{ Name, Address string }
	json.Unmarshal(b, &nodes)
	if len(nodes) == 0 || nodes[0].Name != "n1" || nodes[0].Address != roles.Agent.GRPCAddr {
		t.Fatalf("the scheduler's nodes after the attacks: %s", b)
	}
	req, _ := http.NewRequest("POST", gw+"/function/secret", strings.NewReader("x"))
	req.Header.Set("Authorization", "Bearer "+key.Key)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || !bytes.Equal(body, []byte("INJECTED=")) || r.Header.Get("X-Kiln-Node") != "n1" {
		t.Fatalf("the function through the gateway with the key: %d %q node %q", r.StatusCode, body, r.Header.Get("X-Kiln-Node"))
	}
}
