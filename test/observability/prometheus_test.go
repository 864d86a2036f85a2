package observability

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	// Linked but unused: the test binary's hash then covers the code of the
	// binaries the test builds, so `go test` reruns it when that code
	// changes instead of answering from its cache.
	_ "github.com/kilnfaas/kiln/cmd/kiln/cli"
	_ "github.com/kilnfaas/kiln/sdk/go"

	"github.com/kilnfaas/kiln/internal/teststack/testnet"
)

// The function under load: its SLA, and the calls that miss it.
const (
	slaFunction = "slo"
	deadline    = 50 * time.Millisecond
	slowMs      = 150 // a slow call, far enough past the deadline that client and gateway agree
	// Every missEvery-th call is slow: 20 % misses against a 99 % target,
	// a burn rate of 20, above the fastest alert's 14.4.
	missEvery = 5
)

// rulesFile is deploy/prometheus's rules, relative to this package.
const rulesFile = "../../deploy/prometheus/kiln-sla.rules.yml"

// requireTool finds a program of Debian's prometheus package, skipping
// loudly without it unless KILN_REQUIRE_PROMETHEUS=1 makes that a failure.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		msg := name + " not found in PATH: the dashboards and rules are NOT tested against a real Prometheus (apt-get install -y prometheus)"
		if os.Getenv("KILN_REQUIRE_PROMETHEUS") == "1" {
			t.Fatal(msg + "; KILN_REQUIRE_PROMETHEUS=1 makes this a failure")
		}
		t.Skip("SKIPPING: " + msg)
	}
	return bin
}

// TestPrometheusScrapesKiln runs `kiln up --runtime process` (there is no
// /dev/kvm on the project's hosts; the process runtime keeps every part of
// Kiln real but the VM), deploys a function with a 50 ms deadline and a
// 99 % target and one without an SLA that cold-starts on every call, and
// loads them with fast calls, calls that miss the deadline and one that
// times out. A real Prometheus scrapes the gateway every second and
// evaluates deploy/prometheus/kiln-sla.rules.yml every second. Then:
//
//   - the SLA counters in Prometheus equal what the client counted;
//   - every rule is healthy, every recording rule's expression returns
//     data and its recorded series exists, and the 14.4x burn-rate alert
//     fires for the function (it burns at 20x);
//   - every panel query of both dashboards, with Grafana's variables
//     substituted, parses and returns at least one number.
//
// The windows of 5 minutes and more need no history: rate() over a window
// answers once two samples are in it, so minutes-long windows read the
// test's seconds of data (as they read a young Prometheus's); what the
// test cannot show in seconds — that the long windows forget — the
// promtool unit tests of deploy/prometheus show with synthetic series.
func TestPrometheusScrapesKiln(t *testing.T) {
	promBin := requireTool(t, "prometheus")
	if testing.Short() {
		t.Skip("SKIPPING in -short: builds kiln and runs it with Prometheus for about a minute")
	}
	dir := t.TempDir()
	kiln, fn := build(t, dir)
	gw := startKiln(t, kiln, dir)

	deploy(t, kiln, gw, slaFunction, fn, "--timeout", "1s", "--deadline", deadline.String(), "--target", "99")
	deploy(t, kiln, gw, "cold", fn, "--fresh", "true")

	prom := startPrometheus(t, promBin, dir, gw)

	// Phase one: a counted load, then Prometheus must agree with the client.
	ld := &load{gw: gw}
	ld.stubborn(t, slaFunction, 3000) // past the 1 s timeout: a timeout, and the next call boots
	for i := range 60 {
		ms := 0
		if i%missEvery == missEvery-1 {
			ms = slowMs
		}
		ld.call(t, slaFunction, ms)
		if i%6 == 0 {
			ld.call(t, "cold", 0)
		}
	}
	total, good, ambiguous := ld.counts()
	t.Logf("client: %d calls of %s, %d ok within %s (%d fast calls past it: the gateway may count them good)", total, slaFunction, good, deadline, ambiguous)
	eventually(t, 30*time.Second, "Prometheus to scrape every SLA invocation", func() error {
		got, err := prom.scalar(`sum(kiln_sla_invocations_total{function="` + slaFunction + `"})`)
		if err != nil {
			return err
		}
		if int(got) != total {
			return fmt.Errorf("kiln_sla_invocations_total = %v, the client made %d calls", got, total)
		}
		return nil
	})
	promGood, err := prom.scalar(`sum(kiln_sla_good_total{function="` + slaFunction + `"})`)
	if err != nil {
		t.Fatal(err)
	}
	if d := int(promGood) - good; d < 0 || d > ambiguous {
		t.Fatalf("Prometheus counts %v good invocations, the client %d (with %d ambiguous)", promGood, good, ambiguous)
	}
	attain, err := prom.scalar(`sum(kiln_sla_good_total{function="` + slaFunction + `"}) / sum(kiln_sla_invocations_total{function="` + slaFunction + `"})`)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("attainment: Prometheus %.4f, client %.4f", attain, float64(good)/float64(total))
	// The deadline is a bucket bound, so the histogram gives the same count.
	fromHist, err := prom.scalar(fmt.Sprintf(`sum(kiln_invocation_duration_seconds_bucket{function="%s",outcome="ok",le="%s"})`,
		slaFunction, strconv.FormatFloat(deadline.Seconds(), 'g', -1, 64)))
	if err != nil {
		t.Fatal(err)
	}
	if fromHist != promGood {
		t.Fatalf("the deadline's ok bucket holds %v, kiln_sla_good_total %v", fromHist, promGood)
	}

	// The stubborn call timed out, and the instance it killed was replaced
	// by a cold start: the first call booted one, the next call another.
	// Every slow call and the timeout missed the deadline.
	slow := 60 / missEvery
	for _, c := range []struct {
		expr     string
		min, max float64
	}{
		{`sum(kiln_faas_timeouts_total{function="` + slaFunction + `"})`, 1, 1},
		{`sum(kiln_faas_errors_total{function="` + slaFunction + `",type="timeout"})`, 1, 1},
		{`sum(kiln_faas_coldstarts_total{function="` + slaFunction + `"})`, 2, 2},
		{`sum(kiln_sla_deadline_misses_total{function="` + slaFunction + `"})`, float64(slow + 1), float64(total - good)},
	} {
		got, err := prom.scalar(c.expr)
		if err != nil || got < c.min || got > c.max {
			t.Errorf("%s = %v (%v), want %v to %v", c.expr, got, err, c.min, c.max)
		}
	}

	// Phase two: the same mix keeps coming while every query is checked,
	// so rates over the last minute are never empty.
	stop := ld.background(t)
	defer stop()

	checkRules(t, prom)
	eventually(t, 60*time.Second, "the 1-hour burn-rate alert to fire for "+slaFunction, func() error {
		return prom.firing("KilnSLABurnRate1h", slaFunction)
	})

	ds := loadDashboards(t)
	fns, err := prom.labelValues("function", "kiln_sla_target")
	if err != nil || !contains(fns, slaFunction) {
		t.Fatalf("the SLA dashboard's $function choices (label_values(kiln_sla_target, function)) = %v %v, want %s among them", fns, err, slaFunction)
	}
	var missing []string
	qs := queries(ds)
	t.Logf("checking %d panel queries of %d dashboards", len(qs), len(ds))
	for _, q := range qs {
		expr := substitute(q.Expr, slaFunction)
		n, err := prom.numbers(expr)
		switch {
		case err != nil:
			t.Errorf("%s: %v\n  %s", q, err, expr)
		case n == 0:
			missing = append(missing, fmt.Sprintf("%s: no data\n  %s", q, expr))
		}
	}
	for _, m := range missing {
		t.Error(m)
	}
	if t.Failed() {
		t.Logf("kiln's /metrics:\n%s", get(t, gw+"/metrics"))
	}
}

// checkRules: Prometheus loaded every rule of the file, each evaluated
// without error, and each recording rule's expression and recorded
// series return data.
func checkRules(t *testing.T, prom *prometheus) {
	t.Helper()
	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Rules []struct {
				Record, Alert, Expr string
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, g := range file.Groups {
		want += len(g.Rules)
	}
	eventually(t, 30*time.Second, "every rule evaluated without error", func() error {
		rules, err := prom.rules()
		if err != nil {
			return err
		}
		if len(rules) != want {
			return fmt.Errorf("Prometheus has %d rules, %s %d", len(rules), rulesFile, want)
		}
		for _, r := range rules {
			if r.Health != "ok" {
				return fmt.Errorf("rule %s: health %q %s", r.Name, r.Health, r.LastError)
			}
		}
		return nil
	})
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if r.Record == "" {
				// An alert's expression has data only while it fires;
				// its health is checked above, and one alert must fire.
				if _, err := prom.numbers(r.Expr); err != nil {
					t.Errorf("alert %s: %v", r.Alert, err)
				}
				continue
			}
			for _, expr := range []string{r.Expr, r.Record} {
				if n, err := prom.numbers(expr); err != nil || n == 0 {
					t.Errorf("recording rule %s: %q returns %d numbers (%v)", r.Record, expr, n, err)
				}
			}
		}
	}
}

// build compiles kiln and the test function, and writes a stand-in guest
// kernel: the process runtime never boots it, but images carry one.
func build(t *testing.T, dir string) (kiln, fn string) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	kiln, fn = filepath.Join(dir, "kiln"), filepath.Join(dir, "slowfn")
	for _, s := range []struct {
		args []string
		env  []string
	}{
		{[]string{"build", "-o", kiln, "../../cmd/kiln"}, nil},
		{[]string{"build", "-o", fn, "./testdata/slowfn"}, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}},
	} {
		cmd := exec.Command(goBin, s.args...)
		cmd.Env = append(os.Environ(), s.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(s.args, " "), err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "kernel.elf"), []byte("not booted: the process runtime runs functions as processes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return kiln, fn
}

// start runs a program in its own process group, logging to dir/name.log,
// and kills that group when the test ends.
func start(t *testing.T, dir, name string, bin string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s's log:\n%s", name, tailLines(string(b), 60))
		}
	})
}

func startKiln(t *testing.T, kiln, dir string) string {
	t.Helper()
	addr := testnet.FreeAddr(t)
	start(t, dir, "kiln", kiln, "up", "--runtime", "process", "--listen", addr,
		"--data", filepath.Join(dir, "data"), "--kernel", filepath.Join(dir, "kernel.elf"), "--mem", "1G")
	gw := "http://" + addr
	eventually(t, 60*time.Second, "kiln up to answer /healthz", func() error {
		resp, err := http.Get(gw + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/healthz: %d", resp.StatusCode)
		}
		return nil
	})
	return gw
}

func deploy(t *testing.T, kiln, gw, name, fn string, flags ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"--server", gw, "deploy", name, "--binary", fn, "--kind", "serve", "--mem", "64M"}, flags...)
	cmd := exec.CommandContext(ctx, kiln, args...)
	cmd.Env = cleanEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kiln %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// startPrometheus runs Prometheus with a generated configuration: the
// gateway's /metrics every second, the rules evaluated every second.
func startPrometheus(t *testing.T, bin, dir, gw string) *prometheus {
	t.Helper()
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	target := strings.TrimPrefix(gw, "http://")
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: kiln
    static_configs:
      - targets: [%q]
`, rules, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := testnet.FreeAddr(t)
	start(t, dir, "prometheus", bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+addr, "--log.level=warn")
	p := &prometheus{url: "http://" + addr}
	eventually(t, 60*time.Second, "Prometheus to scrape kiln", func() error {
		up, err := p.scalar(`up{job="kiln"}`)
		if err != nil {
			return err
		}
		if up != 1 {
			return fmt.Errorf("up{job=\"kiln\"} = %v", up)
		}
		return nil
	})
	return p
}

// load makes calls and counts them as a client sees them.
type load struct {
	gw string

	mu        sync.Mutex
	total     int // calls of slaFunction
	good      int // of which: 200 within the deadline
	ambiguous int // of which: fast calls that the client saw past the deadline
}

func (l *load) call(t *testing.T, fn string, ms int) { l.do(t, fn, fmt.Sprintf("ms=%d", ms)) }

// stubborn makes a call that sleeps ms whatever its deadline.
func (l *load) stubborn(t *testing.T, fn string, ms int) {
	l.do(t, fn, fmt.Sprintf("ms=%d&stubborn=1", ms))
}

func (l *load) do(t *testing.T, fn, query string) {
	cl := &http.Client{Timeout: 20 * time.Second}
	t0 := time.Now()
	resp, err := cl.Post(fmt.Sprintf("%s/function/%s?%s", l.gw, fn, query), "text/plain", strings.NewReader("x"))
	took := time.Since(t0)
	code := 0
	if err == nil {
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		code = resp.StatusCode
	} else {
		t.Logf("call %s?%s: %v", fn, query, err)
	}
	if fn != slaFunction {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total++
	if code == http.StatusOK && took <= deadline {
		l.good++
	} else if code == http.StatusOK && took < slowMs*time.Millisecond {
		// A fast call the client saw past the deadline: the gateway's
		// clock starts later and stops earlier, so it may have met it.
		l.ambiguous++
	}
}

func (l *load) counts() (total, good, ambiguous int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.good, l.ambiguous
}

// background keeps the same mix coming, a few calls a second, until stop.
func (l *load) background(t *testing.T) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ms := 0
			if i%missEvery == missEvery-1 {
				ms = slowMs
			}
			l.call(t, slaFunction, ms)
			if i%3 == 0 {
				l.call(t, "cold", 0)
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// prometheus is a client of Prometheus's HTTP API.
type prometheus struct{ url string }

type apiAnswer struct {
	Status    string          `json:"status"`
	Error     string          `json:"error"`
	ErrorType string          `json:"errorType"`
	Data      json.RawMessage `json:"data"`
}

func (p *prometheus) api(path string, params url.Values) (json.RawMessage, error) {
	resp, err := http.Get(p.url + path + "?" + params.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var a apiAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return nil, fmt.Errorf("%s: HTTP %d, not JSON: %v", path, resp.StatusCode, err)
	}
	if a.Status != "success" {
		return nil, fmt.Errorf("%s: %s: %s", path, a.ErrorType, a.Error)
	}
	return a.Data, nil
}

// numbers runs an instant query and returns how many non-NaN numbers it
// answered: a query that parses but has only NaN (0/0) shows nothing in a
// panel either.
func (p *prometheus) numbers(expr string) (int, error) {
	vals, err := p.values(expr)
	n := 0
	for _, v := range vals {
		if !math.IsNaN(v) {
			n++
		}
	}
	return n, err
}

func (p *prometheus) values(expr string) ([]float64, error) {
	data, err := p.api("/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return nil, err
	}
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	var samples [][2]any
	switch d.ResultType {
	case "vector":
		var v []struct {
			Value [2]any `json:"value"`
		}
		if err := json.Unmarshal(d.Result, &v); err != nil {
			return nil, err
		}
		for _, s := range v {
			samples = append(samples, s.Value)
		}
	case "scalar":
		var s [2]any
		if err := json.Unmarshal(d.Result, &s); err != nil {
			return nil, err
		}
		samples = append(samples, s)
	default:
		return nil, fmt.Errorf("result type %s, want a vector or scalar", d.ResultType)
	}
	var out []float64
	for _, s := range samples {
		str, _ := s[1].(string)
		f, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("sample %v: %v", s, err)
		}
		out = append(out, f)
	}
	return out, nil
}

// scalar runs a query that must answer exactly one number.
func (p *prometheus) scalar(expr string) (float64, error) {
	vals, err := p.values(expr)
	if err != nil {
		return 0, err
	}
	if len(vals) != 1 {
		return 0, fmt.Errorf("%s: %d samples, want 1", expr, len(vals))
	}
	return vals[0], nil
}

func (p *prometheus) labelValues(label, match string) ([]string, error) {
	data, err := p.api("/api/v1/label/"+label+"/values", url.Values{"match[]": {match}})
	if err != nil {
		return nil, err
	}
	var out []string
	return out, json.Unmarshal(data, &out)
}

type rule struct {
	Name      string `json:"name"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
	Type      string `json:"type"`
}

func (p *prometheus) rules() ([]rule, error) {
	data, err := p.api("/api/v1/rules", nil)
	if err != nil {
		return nil, err
	}
	var d struct {
		Groups []struct {
			Rules []rule `json:"rules"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	var out []rule
	for _, g := range d.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// firing reports nil when alert fires for function.
func (p *prometheus) firing(alert, function string) error {
	data, err := p.api("/api/v1/alerts", nil)
	if err != nil {
		return err
	}
	var d struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return err
	}
	var seen []string
	for _, a := range d.Alerts {
		if a.Labels["alertname"] == alert && a.Labels["function"] == function && a.State == "firing" {
			return nil
		}
		seen = append(seen, a.Labels["alertname"]+"/"+a.Labels["function"]+"/"+a.State)
	}
	burn, _ := p.values(`function:kiln_sla_burn:ratio_rate1h{function="` + function + `"}`)
	return fmt.Errorf("%s is not firing for %s (alerts: %v; 1h burn rate %v)", alert, function, seen, burn)
}

func eventually(t *testing.T, within time.Duration, what string, f func() error) {
	t.Helper()
	end := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("waited %s for %s: %v", within, what, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func get(t *testing.T, u string) string {
	resp, err := http.Get(u)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}

// cleanEnv keeps the caller's KILN_* settings away from the programs the
// test starts.
func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KILN_") {
			env = append(env, e)
		}
	}
	return env
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
