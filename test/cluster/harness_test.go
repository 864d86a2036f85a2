package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	// Linked but unused: the test binary's hash then covers the code of
	// the binaries TestMain builds, so `go test` reruns these tests when
	// that code changes instead of answering from its cache.
	_ "github.com/kilnfaas/kiln/cmd/kiln/cli"
	_ "github.com/kilnfaas/kiln/sdk/go"
)

// bins are built once by TestMain.
var bins struct {
	kiln, nats, sleepy, kernel string
	err                        error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-cluster-bins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.err = build(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// build compiles kiln, nats-server (the version go.mod pins, so no Debian
// package is needed) and the test function, and writes a stand-in kernel:
// agents run with --runtime process, which never boots it, but images
// must carry one.
func build(dir string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go") // go test's own toolchain
	}
	steps := []struct {
		out  string
		args []string
		env  []string
	}{
		{"kiln", []string{"build", "-o", filepath.Join(dir, "kiln"), "./cmd/kiln"}, nil},
		{"nats-server", []string{"build", "-o", filepath.Join(dir, "nats-server"), "github.com/nats-io/nats-server/v2"}, nil},
		{"sleepy", []string{"build", "-o", filepath.Join(dir, "sleepy"), "./test/cluster/testdata/sleepy"}, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}},
	}
	for _, s := range steps {
		cmd := exec.Command(goBin, s.args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), s.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building %s: %v\n%s", s.out, err, out)
		}
	}
	bins.kiln = filepath.Join(dir, "kiln")
	bins.nats = filepath.Join(dir, "nats-server")
	bins.sleepy = filepath.Join(dir, "sleepy")
	bins.kernel = filepath.Join(dir, "kernel.elf")
	return os.WriteFile(bins.kernel, []byte("not booted: the agents of these tests run functions as processes\n"), 0o644)
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// redisServer finds redis-server, skipping the test loudly when it is
// missing unless KILN_REQUIRE_REDIS=1 makes that a failure (as in CI).
func redisServer(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server not found in PATH: the cluster is NOT tested (apt-get install -y redis-server)"
		if os.Getenv("KILN_REQUIRE_REDIS") == "1" {
			t.Fatal(msg + "; KILN_REQUIRE_REDIS=1 makes this a failure")
		}
		t.Skip("SKIPPING: " + msg)
	}
	return bin
}

// handedOut holds every port freePort returned in this test binary: the
// kernel may offer a port again once its probe listener closes, and a role
// started a moment ago may not have bound its port yet (CI once gave a
// gateway and an agent the same port).
var handedOut sync.Map

// freePort returns a port nobody listened on a moment ago and that this
// binary has not handed out before. Another process may still take it before
// ours binds; the roles then fail to start, loudly.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if _, taken := handedOut.LoadOrStore(port, true); !taken {
			return port
		}
	}
	t.Fatal("no unused port after 100 tries")
	return 0
}

func addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// proc is one process the test started, in its own process group so that
// what it starts (an agent's function processes) goes with it.
type proc struct {
	name string
	args []string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// Cluster is the set of processes of one test. Every process is killed
// when the test ends, and all of them at once if the test outlives its
// hard limit.
type Cluster struct {
	t   *testing.T
	dir string

	mu    sync.Mutex
	procs []*proc

	// CADir holds the cluster's CA and the roles' certificates, made
	// with `kiln ca init` and `kiln ca issue`.
	CADir string

	RedisPort, NATSPort      int
	RedisURL, NATSURL        string
	SchedAddr, SchedHTTP     string
	Gateways                 []string // base URLs
	Agents                   map[string]*proc
	AgentHTTP                map[string]string // name → base URL of /healthz, /readyz, /metrics
	agentArgs                map[string][]string
	schedArgs                []string
	redisArgs, natsArgs      []string
	http                     *http.Client
	redis, sched, nats       *proc
	redisBin                 string
	redisDir                 string
	schedPort, schedHTTPPort int
}

// newCluster starts redis-server, nats-server, a scheduler, the gateways
// and the agents, and waits until every role is ready. limit is the test's
// hard limit: when it passes every process is killed and the test fails.
func newCluster(t *testing.T, gateways, agents int, limit time.Duration) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("cluster tests start a dozen processes; skipped with -short")
	}
	if bins.err != nil {
		t.Fatalf("build: %v", bins.err)
	}
	c := &Cluster{t: t, dir: t.TempDir(), Agents: map[string]*proc{}, AgentHTTP: map[string]string{}, agentArgs: map[string][]string{},
		http: &http.Client{Timeout: 15 * time.Second}}
	c.redisBin = redisServer(t)
	hard := time.AfterFunc(limit, func() {
		c.killAll()
		t.Errorf("HARD LIMIT: the test ran past %v; every process was killed", limit)
	})
	t.Cleanup(func() {
		hard.Stop()
		c.killAll()
		if t.Failed() {
			c.dumpLogs()
		}
	})

	c.RedisPort = freePort(t)
	c.RedisURL = fmt.Sprintf("redis://%s/0", addr(c.RedisPort))
	c.redisDir = filepath.Join(c.dir, "redis")
	os.MkdirAll(c.redisDir, 0o700)
	// appendfsync always: a registered function survives even kill -9.
	c.redisArgs = []string{"--port", fmt.Sprint(c.RedisPort), "--bind", "127.0.0.1", "--dir", c.redisDir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", ""}
	c.redis = c.start("redis", c.redisBin, c.redisArgs...)
	c.waitTCP(addr(c.RedisPort))

	c.NATSPort = freePort(t)
	c.NATSURL = "nats://" + addr(c.NATSPort)
	c.natsArgs = []string{"-a", "127.0.0.1", "-p", fmt.Sprint(c.NATSPort), "-js", "-sd", filepath.Join(c.dir, "nats")}
	c.nats = c.start("nats", bins.nats, c.natsArgs...)
	c.waitTCP(addr(c.NATSPort))

	c.CADir = filepath.Join(c.dir, "pki")
	c.caRun("init", "--dir", c.CADir)

	c.schedPort, c.schedHTTPPort = freePort(t), freePort(t)
	c.SchedAddr, c.SchedHTTP = addr(c.schedPort), "http://"+addr(c.schedHTTPPort)
	c.schedArgs = append([]string{"scheduler", "--listen", c.SchedAddr, "--http", addr(c.schedHTTPPort)}, c.tlsArgs("scheduler", "")...)
	c.sched = c.start("scheduler", bins.kiln, c.schedArgs...)
	c.waitReady(c.SchedHTTP)

	// One certificate for every gateway, issued once: issuing it again for
	// the next gateway rewrote gateway.crt and gateway.key while the one
	// before was reading them, which then started with a key from one
	// issue and a certificate from the other ("private key does not match
	// public key", seen once in CI).
	gatewayTLS := c.tlsArgs("gateway", "")
	for i := range gateways {
		port := freePort(t)
		c.start(fmt.Sprintf("gateway%d", i+1), bins.kiln, append([]string{"gateway", "--listen", addr(port),
			"--redis", c.RedisURL, "--nats", c.NATSURL, "--scheduler", c.SchedAddr, "--kernel", bins.kernel}, gatewayTLS...)...)
		c.Gateways = append(c.Gateways, "http://"+addr(port))
	}
	for i := range agents {
		name := fmt.Sprintf("node%d", i+1)
		httpAddr := addr(freePort(t))
		c.AgentHTTP[name] = "http://" + httpAddr
		c.agentArgs[name] = []string{"agent", "--name", name, "--runtime", "process", "--mem", "256M",
			"--listen", addr(freePort(t)), "--http", httpAddr,
			"--scheduler", c.SchedAddr, "--nats", c.NATSURL, "--data", filepath.Join(c.dir, name)}
		c.agentArgs[name] = append(c.agentArgs[name], c.tlsArgs("agent", name)...)
		c.Agents[name] = c.start(name, bins.kiln, c.agentArgs[name]...)
	}
	for _, g := range c.Gateways {
		c.waitReady(g)
	}
	for _, u := range c.AgentHTTP {
		c.waitReady(u)
	}
	c.waitNodes(agents)
	return c
}

// caRun runs `kiln ca ARGS...`.
func (c *Cluster) caRun(args ...string) {
	c.t.Helper()
	cmd := exec.Command(bins.kiln, append([]string{"ca"}, args...)...)
	cmd.Env = cleanEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("kiln ca %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// tlsArgs issues the certificate of role (an agent: of node) with `kiln
// ca issue` and returns the flags that start the role with it.
func (c *Cluster) tlsArgs(role, node string) []string {
	c.t.Helper()
	args := []string{"issue", "--dir", c.CADir, "--role", role, "--host", "127.0.0.1"}
	base := role
	if node != "" {
		args = append(args, "--node", node)
		base += "-" + node
	}
	c.caRun(args...)
	return []string{"--tls-ca", filepath.Join(c.CADir, "ca.crt"),
		"--tls-cert", filepath.Join(c.CADir, base+".crt"), "--tls-key", filepath.Join(c.CADir, base+".key")}
}

// start runs bin with args, its output going to a log file.
func (c *Cluster) start(name, bin string, args ...string) *proc {
	c.t.Helper()
	logPath := filepath.Join(c.dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = cleanEnv()
	if err := cmd.Start(); err != nil {
		f.Close()
		c.t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{name: name, args: args, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

// cleanEnv is the test's environment without KILN_ variables, so that a
// developer's settings do not leak into the roles.
func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KILN_") {
			env = append(env, e)
		}
	}
	return env
}

// kill sends SIGKILL to p's process group and waits for p.
func (p *proc) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

func (p *proc) signal(sig syscall.Signal) { p.cmd.Process.Signal(sig) }

func (c *Cluster) killAll() {
	c.mu.Lock()
	procs := append([]*proc(nil), c.procs...)
	c.mu.Unlock()
	for _, p := range procs {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGCONT) // a frozen one must die too
		p.kill()
	}
}

func (c *Cluster) dumpLogs() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		data, _ := os.ReadFile(p.log)
		if len(data) > 6000 {
			data = append([]byte("…"), data[len(data)-6000:]...)
		}
		c.t.Logf("---- %s (%s) ----\n%s", p.name, strings.Join(p.args, " "), data)
	}
}

func (c *Cluster) waitTCP(a string) {
	c.t.Helper()
	c.eventually(10*time.Second, "listening on "+a, func() bool {
		conn, err := net.DialTimeout("tcp", a, 200*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
}

// waitReady polls base/readyz until it answers 200.
func (c *Cluster) waitReady(base string) {
	c.t.Helper()
	c.eventually(20*time.Second, base+"/readyz", func() bool {
		code, _ := c.get(base + "/readyz")
		return code == http.StatusOK
	})
}

// eventually polls cond every 20 ms until it holds or d has passed.
func (c *Cluster) eventually(d time.Duration, what string, cond func() bool) {
	c.t.Helper()
	for end := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(end) {
			c.t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

func (c *Cluster) get(url string) (int, []byte) {
	resp, err := c.http.Get(url)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// node is the part of the scheduler's GET /nodes the tests read.
type node struct {
	Name          string
	Cached        map[string]bool
	Warm          map[string]struct{ Idle, Busy uint32 }
	LastHeartbeat time.Time
}

func (c *Cluster) nodes() ([]node, error) {
	code, body := c.get(c.SchedHTTP + "/nodes")
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /nodes: %d %s", code, body)
	}
	var ns []node
	return ns, json.Unmarshal(body, &ns)
}

func (c *Cluster) nodeNames() string {
	ns, err := c.nodes()
	if err != nil {
		return err.Error()
	}
	var names []string
	for _, n := range ns {
		names = append(names, n.Name)
	}
	return strings.Join(names, ",")
}

func (c *Cluster) waitNodes(n int) {
	c.t.Helper()
	c.eventually(20*time.Second, fmt.Sprintf("%d nodes at the scheduler", n), func() bool {
		ns, err := c.nodes()
		return err == nil && len(ns) == n
	})
}

// kiln runs the kiln CLI against gateway g.
func (c *Cluster) kiln(g string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.kiln, append([]string{"--server", g}, args...)...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// deploy deploys the sleepy function as name through gateway g and returns
// its image digest.
func (c *Cluster) deploy(g, name string) string {
	c.t.Helper()
	if out, err := c.kiln(g, "deploy", name, "--binary", bins.sleepy, "--kind", "serve", "--mem", "64M"); err != nil {
		c.t.Fatalf("kiln deploy %s: %v\n%s", name, err, out)
	}
	code, body := c.get(g + "/system/functions/" + name)
	if code != http.StatusOK {
		c.t.Fatalf("describe %s: %d %s", name, code, body)
	}
	var fn struct {
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal(body, &fn); err != nil || fn.Digest == "" {
		// Not fatal: the digest only sharpens some checks.
		c.t.Logf("describe %s: no digest in %s", name, body)
	}
	return fn.Digest
}

// result is one invocation as the caller saw it.
type result struct {
	code    int
	node    string
	body    string
	took    time.Duration
	err     error
	started time.Time
}

// invoke calls POST g/function/name?ms=ms with body, with a client that
// gives up after 10 s, so a hang shows as an error rather than a stuck
// test.
func (c *Cluster) invoke(g, name string, ms int, body string) result {
	cl := &http.Client{Timeout: 10 * time.Second}
	t0 := time.Now()
	resp, err := cl.Post(fmt.Sprintf("%s/function/%s?ms=%d", g, name, ms), "text/plain", bytes.NewBufferString(body))
	r := result{started: t0}
	if err != nil {
		r.err, r.took = err, time.Since(t0)
		return r
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r.code, r.node, r.body, r.took = resp.StatusCode, resp.Header.Get("X-Kiln-Node"), string(b), time.Since(t0)
	return r
}

// load runs workers callers that invoke name through g back to back, each
// call sleeping ms in the function, until stop is called; stop returns
// every result.
func (c *Cluster) load(g, name string, workers, ms int) (stop func() []result) {
	var mu sync.Mutex
	var all []result
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				r := c.invoke(g, name, ms, fmt.Sprintf("w%d-%d", w, i))
				mu.Lock()
				all = append(all, r)
				mu.Unlock()
				if r.code != http.StatusOK {
					time.Sleep(20 * time.Millisecond) // a failing cluster is not hammered
				}
			}
		}()
	}
	return func() []result {
		close(done)
		wg.Wait()
		return all
	}
}

// spread invokes name through the gateways, six at a time with calls that
// take 300 ms, until all n nodes have served it, and returns how many calls
// each node served.
func (c *Cluster) spread(name string, n int) map[string]int {
	c.t.Helper()
	seen := map[string]int{}
	c.eventually(60*time.Second, fmt.Sprintf("%d nodes serving %s", n, name), func() bool {
		results := make([]result, 6)
		var wg sync.WaitGroup
		for i := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = c.invoke(c.Gateways[i%len(c.Gateways)], name, 300, fmt.Sprint(i))
			}()
		}
		wg.Wait()
		for i, r := range results {
			if r.err != nil || r.code != http.StatusOK || r.body != fmt.Sprintf("hello, %d", i) {
				c.t.Fatalf("call %d: %d %q %v", i, r.code, r.body, r.err)
			}
			seen[r.node]++
		}
		return len(seen) == n
	})
	return seen
}
