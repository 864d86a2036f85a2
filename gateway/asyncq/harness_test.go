package asyncq_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/internal/teststack"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

var (
	fnOnce sync.Once
	fnPath string
	fnErr  error
)

// fnProgram builds testdata/fn, which the node-agent's ProcessBooter runs
// as a host process: the whole path gateway → queue → worker → scheduler
// → agent → function is real on hosts without KVM.
func fnProgram(t testing.TB) []byte {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("these tests build testdata/fn with the go tool, which is not installed")
	}
	fnOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-async-fn-")
		if err != nil {
			fnErr = err
			return
		}
		fnPath = filepath.Join(dir, "fn")
		cmd := exec.Command("go", "build", "-o", fnPath, "./testdata/fn")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fnErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if fnErr != nil {
		t.Fatal(fnErr)
	}
	b, err := os.ReadFile(fnPath)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// env is a whole Kiln path on real parts, a test stack
// (internal/teststack): a real nats-server with JetStream (queue, status
// bucket, images), a bbolt registry, a scheduler and a node-agent over gRPC
// on 127.0.0.1 (functions run as host processes), the gateway's HTTP API,
// and a queue the workers of a test attach to (the stack runs none).
type env struct {
	url     string
	stack   *teststack.Stack
	natsURL string
	nc      *nats.Conn
	queue   *asyncq.Queue
	sched   kilnv1.SchedulerClient
	reg     *prometheus.Registry
	trace   string
	prog    []byte
	client  *http.Client
	// callbackAllow is the allow-list of the gateway's queue and of every
	// worker the test starts; workerReg holds the metrics of those workers.
	callbackAllow []netip.Prefix
	workerReg     *prometheus.Registry
	workers       int
}

type envConfig struct {
	maxBody int64
	noAgent bool
	// callbackAllow is the operator's --callback-allow: the callbacks to
	// test servers on 127.0.0.1 need loopback127.
	callbackAllow []netip.Prefix
	// seen, when set, records the requests that reach the gateway.
	seen *arrivals
}

// loopback127 allows 127.0.0.1 alone, where test servers listen.
var loopback127 = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

func newEnv(t testing.TB, ec envConfig) *env {
	t.Helper()
	prog := fnProgram(t)
	s := teststack.Start(t, teststack.Options{NATS: true, NoAgent: ec.noAgent, NoWorker: true, Logger: testLogger(t),
		Gateway: gateway.Config{Kernel: prog, MaxBodyBytes: ec.maxBody}, CallbackAllow: ec.callbackAllow,
		WrapGateway: ec.seen.wrap})
	e := &env{url: s.URL, stack: s, natsURL: s.NATSURL, queue: s.Queue, sched: s.SchedulerClient, reg: s.Metrics,
		prog: prog, trace: filepath.Join(t.TempDir(), "trace"), client: &http.Client{Timeout: 30 * time.Second},
		callbackAllow: ec.callbackAllow, workerReg: prometheus.NewRegistry()}
	e.nc = connect(t, e.natsURL)
	return e
}

// startAgent runs a node-agent (functions as host processes) registered
// with the scheduler; the returned kill stops it at once, as a crash would
// for the invocations it runs: their gRPC calls fail.
func (e *env) startAgent(t testing.TB, node string) (kill func()) {
	t.Helper()
	return e.stack.AddAgent(t, node).Kill
}

func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// testLogger shows the queue's log in `go test -v` output.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fastWorker has short timings so that retries and redeliveries happen
// within a test.
func fastWorker(sched kilnv1.SchedulerClient) asyncq.WorkerConfig {
	return asyncq.WorkerConfig{
		Scheduler: sched, Concurrency: 4, AckWait: 2 * time.Second,
		BackoffBase: 150 * time.Millisecond, BackoffMax: 2 * time.Second,
		CallbackTimeout: 300 * time.Millisecond, CallbackAttempts: 3, CallbackConcurrency: 2,
	}
}

// startWorker runs a worker on a connection of its own, so that a test can
// kill that connection as a crash would.
func (e *env) startWorker(t testing.TB, cfg asyncq.WorkerConfig) (*asyncq.Worker, *nats.Conn) {
	t.Helper()
	nc := connect(t, e.natsURL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Every worker's metrics in one registry, told apart by a label.
	var reg prometheus.Registerer
	if e.workerReg != nil {
		e.workers++
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"worker": strconv.Itoa(e.workers)}, e.workerReg)
	}
	q, err := asyncq.Open(ctx, nc, asyncq.Config{Logger: testLogger(t), CallbackAllow: e.callbackAllow, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	w, err := q.StartWorker(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		w.Stop(ctx)
	})
	return w, nc
}

// deploy registers testdata/fn as a serve function through the gateway.
func (e *env) deploy(t testing.TB, name string, extra url.Values) {
	t.Helper()
	v := url.Values{"name": {name}, "kind": {"serve"}, "timeout": {"5s"}, "env": {"TRACE=" + e.trace}}
	for k, vs := range extra {
		v[k] = vs
	}
	resp, err := e.client.Post(e.url+"/system/functions?"+v.Encode(), "application/octet-stream", bytes.NewReader(e.prog))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("deploy %s: %s %s", name, resp.Status, b)
	}
}

// async POSTs to /async-function/target and returns the answer.
func (e *env) async(t testing.TB, target, body string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+"/async-function/"+target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

// accepted POSTs and insists on a 202 with an id; it returns the id.
func (e *env) accepted(t testing.TB, target, body string, header http.Header) string {
	t.Helper()
	resp, b := e.async(t, target, body, header)
	var a gateway.Accepted
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(b, &a) != nil || a.ID == "" {
		t.Fatalf("POST /async-function/%s: %s %s", target, resp.Status, b)
	}
	if got := resp.Header.Get(gateway.HeaderInvocationID); got != a.ID {
		t.Fatalf("%s header %q, body id %q", gateway.HeaderInvocationID, got, a.ID)
	}
	if a.StatusURL != "/system/invocations/"+a.ID || resp.Header.Get("Location") != a.StatusURL {
		t.Fatalf("status URL %q, Location %q", a.StatusURL, resp.Header.Get("Location"))
	}
	return a.ID
}

// status GETs /system/invocations/id.
func (e *env) status(t testing.TB, id string) (int, *asyncq.Status, []byte) {
	t.Helper()
	resp, err := e.client.Get(e.url + "/system/invocations/" + id)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, b
	}
	var st asyncq.Status
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("status of %s: %v: %s", id, err, b)
	}
	return resp.StatusCode, &st, b
}

// waitStatus polls until the invocation's status satisfies cond.
func (e *env) waitStatus(t testing.TB, id, what string, cond func(*asyncq.Status) bool) *asyncq.Status {
	t.Helper()
	var last []byte
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		code, st, b := e.status(t, id)
		last = b
		if code == http.StatusOK && cond(st) {
			return st
		}
	}
	t.Fatalf("timed out waiting for %s of %s; last status:\n%s", what, id, last)
	return nil
}

func final(st *asyncq.Status) bool { return st.State.Final() }

// runs counts the runs of invocation id that the function started.
func (e *env) runs(t testing.TB, id string) int {
	b, err := os.ReadFile(e.trace)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == id && f[3] == "start" {
			n++
		}
	}
	return n
}

// drained reports whether no invocation or callback waits in the stream
// (a work queue keeps a message until it is acknowledged).
func (e *env) drained(t testing.TB) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js, _ := jetstream.New(e.nc)
	s, err := js.Stream(ctx, asyncq.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs == 0
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
