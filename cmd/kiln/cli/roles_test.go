package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/internal/rolecert"
	"github.com/kilnfaas/kiln/internal/rolecert/rolecerttest"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
)

// lockedBuffer is written by a running command while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// `kiln scheduler` configured only by environment variables serves gRPC
// (with the health service) and its HTTP endpoints, and stops cleanly when
// its context ends (SIGTERM in the real binary).
func TestSchedulerRoleFromEnv(t *testing.T) {
	grpcAddr, httpAddr := testnet.FreeAddr(t), testnet.FreeAddr(t)
	t.Setenv("KILN_LISTEN", grpcAddr)
	t.Setenv("KILN_HTTP_LISTEN", httpAddr)
	t.Setenv("KILN_HEARTBEAT", "250ms")
	ca := rolecerttest.New(t)
	tlsFiles := ca.Scheduler(t)
	t.Setenv("KILN_TLS_CA", tlsFiles.CA)
	t.Setenv("KILN_TLS_CERT", tlsFiles.Cert)
	t.Setenv("KILN_TLS_KEY", tlsFiles.Key)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb lockedBuffer
	code := make(chan int, 1)
	go func() { code <- cli.Main(ctx, []string{"scheduler"}, strings.NewReader(""), &out, &errb) }()

	base := "http://" + httpAddr
	var resp *http.Response
	var err error
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if resp, err = http.Get(base + "/readyz"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("scheduler never served /readyz: %v\nstderr: %s", err, errb.String())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ready struct {
		Role  string
		Ready bool
	}
	if json.Unmarshal(body, &ready); resp.StatusCode != 200 || ready.Role != "scheduler" || !ready.Ready {
		t.Fatalf("/readyz: %d %s", resp.StatusCode, body)
	}
	for path, want := range map[string]string{"/healthz": "ok", "/nodes": "[]", "/metrics": "kiln_scheduler_nodes 0"} {
		r, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d %.200s (want %q)", path, r.StatusCode, b, want)
		}
	}
	// Its gRPC is mTLS on the certificates of $KILN_TLS_*: a gateway's
	// certificate gets the health service, plaintext gets nothing.
	gw := rolecerttest.Credentials(t, ca.Gateway(t))
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(gw.Client(rolecert.Identity{Role: rolecert.RoleScheduler})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	h, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{Service: "kiln.v1.Scheduler"})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health: %v %v", h, err)
	}
	plain, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := healthpb.NewHealthClient(plain).Check(hctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("a plaintext client was answered by a scheduler started with TLS")
	}
	if !strings.Contains(out.String(), "gRPC on "+grpcAddr) {
		t.Errorf("stdout does not say where it serves: %q", out.String())
	}
	if !strings.Contains(errb.String(), "heartbeat=250ms") {
		t.Errorf("KILN_HEARTBEAT not applied; log: %s", errb.String())
	}
	cancel()
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit %d; stderr: %s", c, errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("scheduler did not stop within 10 s of its context ending")
	}
}

// Command-line mistakes exit 2 with a sentence; a role that cannot start
// exits 1 and says what to give it.
func TestRoleRefusals(t *testing.T) {
	run := func(env map[string]string, args ...string) (int, string) {
		for k, v := range env {
			t.Setenv(k, v)
		}
		var out, errb bytes.Buffer
		c := cli.Main(context.Background(), args, strings.NewReader(""), &out, &errb)
		for k := range env {
			os.Unsetenv(k)
		}
		return c, errb.String()
	}
	data := t.TempDir()
	ca := rolecerttest.New(t)
	gwTLS, n1TLS := ca.Gateway(t), ca.Agent(t, "node1")
	tlsArgs := func(f rolecert.Files) []string {
		return []string{"--tls-ca", f.CA, "--tls-cert", f.Cert, "--tls-key", f.Key}
	}
	agentArgs := func(extra ...string) []string {
		return append([]string{"agent", "--runtime", "process", "--data", data, "--nats", "nats://127.0.0.1:1",
			"--listen", testnet.FreeAddr(t), "--http", testnet.FreeAddr(t)}, extra...)
	}
	cases := []struct {
		env  map[string]string
		args []string
		code int
		want string
	}{
		{nil, []string{"agent", "--runtime", "docker"}, 2, `--runtime "docker": want kvm`},
		{map[string]string{"KILN_RUNTIME": "vm"}, []string{"agent"}, 2, `--runtime "vm"`},
		{nil, []string{"agent", "--mem", "lots"}, 2, "--mem"},
		{nil, []string{"scheduler", "--heartbeat", "1ns"}, 2, "at least 10ms"},
		{nil, []string{"scheduler", "extra"}, 2, "usage"},
		{nil, []string{"gateway", "--kernel", "/nonexistent"}, 1, "no Redis URL (--redis, $KILN_REDIS_URL)"},
		{nil, []string{"gateway", "--callback-allow", "localhost"}, 2, `gateway: --callback-allow: netpolicy: bad prefix: "localhost"`},
		{map[string]string{"KILN_CALLBACK_ALLOW": "10.0.0.0/33"}, []string{"up"}, 2, `up: --callback-allow: netpolicy: bad prefix: "10.0.0.0/33"`},
		{nil, []string{"agent", "--runtime", "process", "--data", data, "--listen", testnet.FreeAddr(t), "--http", testnet.FreeAddr(t),
			"--insecure-grpc"}, 1, "no NATS URL (--nats, $KILN_NATS_URL)"},
		{nil, agentArgs("--insecure-grpc"), 1, "NATS unavailable"},
		{nil, agentArgs(tlsArgs(n1TLS)...), 1, "NATS unavailable"},
		// Nobody runs plaintext by accident.
		{nil, agentArgs(), 1, "no TLS between the roles: give --tls-ca, --tls-cert and --tls-key"},
		{nil, []string{"scheduler", "--listen", testnet.FreeAddr(t), "--http", testnet.FreeAddr(t)}, 1, "or --insecure-grpc"},
		{nil, []string{"gateway", "--redis", "redis://127.0.0.1:1/0", "--kernel", "/nonexistent"}, 1, "no TLS between the roles"},
		{map[string]string{"KILN_INSECURE_GRPC": "1"}, agentArgs(tlsArgs(n1TLS)...), 1, "--insecure-grpc and --tls-* both given"},
		{nil, agentArgs("--tls-ca", n1TLS.CA, "--tls-cert", n1TLS.Cert), 1, "give all of the CA certificate"},
		{nil, agentArgs(tlsArgs(gwTLS)...), 1, "is the certificate of kiln://gateway, not of a agent"},
		{nil, agentArgs(append(tlsArgs(n1TLS), "--name", "node2")...), 1, `--name "node2", but the certificate`},
		{nil, agentArgs(tlsArgs(rolecert.Files{CA: rolecerttest.New(t).CACert(), Cert: n1TLS.Cert, Key: n1TLS.Key})...), 1,
			"is not a valid certificate of the CA"},
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		cases = append(cases, struct {
			env  map[string]string
			args []string
			code int
			want string
		}{nil, []string{"agent", "--data", data, "--nats", "nats://127.0.0.1:1", "--insecure-grpc"}, 1, "--runtime process runs functions as plain host processes"})
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			code, stderr := run(tc.env, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}
