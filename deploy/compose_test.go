// Package deploy holds Kiln's deployment files: the image (Dockerfile),
// the compose topology's own configuration (compose/), Kubernetes manifests
// (k8s/), and the Prometheus rules and Grafana dashboards (prometheus/,
// grafana/). There is no Docker engine or Kubernetes on the project's
// machines, so these tests check the files statically: they parse, every
// image is pinned or built here, every file they mount or name exists, and
// every address one part gives for another is one that part listens on.
// The same topology runs as processes on loopback in test/cluster/.
package deploy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/store/apikeys"
)

// root is the repository, seen from this package.
const root = ".."

type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
	// Extensions are x-… keys (anchors shared by services); any other
	// top-level key is a mistake.
	Extensions map[string]any `yaml:",inline"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       *composeBuild     `yaml:"build"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	User        string            `yaml:"user"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	Devices     []string          `yaml:"devices"`
	Environment map[string]string `yaml:"environment"`
	MemLimit    string            `yaml:"mem_limit"`
	Restart     string            `yaml:"restart"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test        []string `yaml:"test"`
		Interval    string   `yaml:"interval"`
		Timeout     string   `yaml:"timeout"`
		Retries     int      `yaml:"retries"`
		StartPeriod string   `yaml:"start_period"`
	} `yaml:"healthcheck"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true) // a misspelt key is an error here, as it is for docker compose
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	if len(c.Services) == 0 {
		t.Fatal("docker-compose.yml: no services")
	}
	for k := range c.Extensions {
		if !strings.HasPrefix(k, "x-") {
			t.Errorf("docker-compose.yml: unknown top-level key %q", k)
		}
	}
	return c
}

// pinned is a published image named with an explicit version tag: a
// moving tag (latest, none, a bare name like "alpine") would make the
// topology change under its users.
var pinned = regexp.MustCompile(`^[a-z0-9]+([._/-][a-z0-9]+)*:v?[0-9]+(\.[0-9]+)+(-[a-z0-9.]+)?$`)

// builtHere lists the images built from a Dockerfile in the repository:
// image name → Dockerfile.
func builtHere(t *testing.T, c composeFile) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, s := range c.Services {
		if s.Build == nil {
			continue
		}
		df := filepath.Join(root, s.Build.Context, s.Build.Dockerfile)
		if _, err := os.Stat(df); err != nil {
			t.Errorf("service %s builds from %s: %v", name, df, err)
		}
		if s.Image == "" {
			t.Errorf("service %s: a built service names its image, so that the services built from one Dockerfile share it", name)
			continue
		}
		if prev, ok := out[s.Image]; ok && prev != df {
			t.Errorf("image %s is built from both %s and %s", s.Image, prev, df)
		}
		out[s.Image] = df
	}
	return out
}

// isRole reports whether s runs a kiln role (gateway, scheduler, agent):
// the kiln image with its own entrypoint. A service of the image with
// another entrypoint (the pki service's shell) is a one-shot job.
func isRole(s composeService, built map[string]string) bool {
	_, ok := built[s.Image]
	return ok && len(s.Entrypoint) == 0
}

// listener is one port a service listens on, what it speaks there ("http",
// "grpc", "redis", "nats", "otlp-http", ...) and whether other containers
// can reach it (not loopback only).
type listener struct {
	port   int
	kind   string
	public bool
}

// kilnListeners returns what a kiln command listens on, from its flags and
// the roles' defaults, after checking every flag it gives exists in the
// real CLI.
func kilnListeners(t *testing.T, where string, args []string) (role string, flags map[string]string, ls []listener) {
	t.Helper()
	if len(args) == 0 {
		t.Fatalf("%s: kiln without a command", where)
	}
	role, flags = args[0], map[string]string{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			t.Errorf("%s: argument %q is not a --flag", where, a)
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok {
			if i+1 >= len(args) {
				t.Errorf("%s: --%s has no value", where, k)
				continue
			}
			i++
			v = args[i]
		}
		flags[k] = v
	}
	help := kilnHelp(t, role)
	for k := range flags {
		if !strings.Contains(help, "--"+k+" ") {
			t.Errorf("%s: `kiln %s` has no flag --%s", where, role, k)
		}
	}
	addr := func(flag, def, kind string) {
		a := flags[flag]
		if a == "" {
			a = def
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			t.Errorf("%s: --%s %q: %v", where, flag, a, err)
			return
		}
		p, _ := strconv.Atoi(port)
		ip := net.ParseIP(host)
		ls = append(ls, listener{port: p, kind: kind, public: host == "" || (ip != nil && ip.IsUnspecified())})
	}
	switch role {
	case "gateway", "up":
		addr("listen", platform.DefaultHTTPAddr, "kiln-http")
	case "scheduler":
		addr("listen", platform.DefaultSchedulerAddr, "grpc")
		addr("http", platform.DefaultSchedulerHTTPAddr, "kiln-http")
	case "agent":
		addr("listen", platform.DefaultAgentAddr, "grpc")
		addr("http", platform.DefaultAgentHTTPAddr, "kiln-http")
	default:
		t.Errorf("%s: unknown kiln command %q", where, role)
	}
	return role, flags, ls
}

var helpCache = map[string]string{}

func kilnHelp(t *testing.T, cmd string) string {
	t.Helper()
	if h, ok := helpCache[cmd]; ok {
		return h
	}
	var out, errb bytes.Buffer
	if code := cli.Main(context.Background(), []string{cmd, "--help"}, strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("kiln %s --help: exit %d: %s", cmd, code, errb.String())
	}
	helpCache[cmd] = out.String()
	return out.String()
}

// thirdParty are the ports the published images listen on by default; a
// flag in the service's command may move them (portFlags).
var thirdParty = map[string][]listener{
	"nats":                     {{port: 4222, kind: "nats"}, {port: 8222, kind: "http"}},
	"redis":                    {{port: 6379, kind: "redis"}},
	"prom/prometheus":          {{port: 9090, kind: "http"}},
	"grafana/grafana":          {{port: 3000, kind: "http"}},
	"jaegertracing/all-in-one": {{port: 4317, kind: "otlp-grpc"}, {port: 4318, kind: "otlp-http"}, {port: 16686, kind: "http"}, {port: 14269, kind: "http"}},
}

var portFlags = map[string]map[string]int{
	"nats":  {"--port": 4222, "--http_port": 8222},
	"redis": {"--port": 6379},
}

// listeners of every compose service.
func composeListeners(t *testing.T, c composeFile, built map[string]string) map[string][]listener {
	out := map[string][]listener{}
	for name, s := range c.Services {
		if _, ok := built[s.Image]; ok {
			if isRole(s, built) {
				_, _, ls := kilnListeners(t, "service "+name, s.Command)
				out[name] = ls
			}
			continue
		}
		repo, _, _ := strings.Cut(s.Image, ":")
		ports, ok := thirdParty[repo]
		if !ok {
			t.Errorf("service %s: image %s: the test does not know which ports it listens on; add it to thirdParty", name, s.Image)
			continue
		}
		ports = slices.Clone(ports)
		for i, a := range s.Command {
			if def, ok := portFlags[repo][a]; ok && i+1 < len(s.Command) {
				p, err := strconv.Atoi(s.Command[i+1])
				if err != nil {
					t.Errorf("service %s: %s %q", name, a, s.Command[i+1])
				}
				ports[slices.IndexFunc(ports, func(l listener) bool { return l.port == def })].port = p
			}
		}
		for _, l := range ports {
			l.public = true
			out[name] = append(out[name], l)
		}
	}
	return out
}

// reach checks that host:port, named by from, is a service of the
// topology listening on that port for other containers (or, for
// 127.0.0.1, from itself) and speaking kind there ("http" includes Kiln's
// "kiln-http"; "" is anything).
func reach(t *testing.T, ls map[string][]listener, from, what, hostport, kind string) {
	t.Helper()
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Errorf("%s: %s %q: %v", from, what, hostport, err)
		return
	}
	p, _ := strconv.Atoi(port)
	self := false
	if host == "127.0.0.1" || host == "localhost" {
		host, self = from, true
	}
	svc, ok := ls[host]
	if !ok {
		t.Errorf("%s: %s %q: no service %q", from, what, hostport, host)
		return
	}
	for _, l := range svc {
		if l.port == p && (l.public || self) && (kind == "" || kind == l.kind || (kind == "http" && l.kind == "kiln-http")) {
			return
		}
	}
	t.Errorf("%s: %s %q: service %s listens on %+v, not on port %d for %s from other containers", from, what, hostport, host, svc, p, or(kind, "anything"))
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func hostPort(t *testing.T, from, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		t.Errorf("%s: %q is not a URL", from, raw)
		return ""
	}
	if u.Port() == "" {
		t.Errorf("%s: %q names no port", from, raw)
	}
	return u.Host
}

// mountSource maps a path inside service s's container back to the
// repository file or directory mounted there ("" when none is).
func mountSource(s composeService, inside string) string {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || !strings.HasPrefix(parts[0], "./") {
			continue
		}
		if inside == parts[1] {
			return filepath.Join(root, parts[0])
		}
		if rest, ok := strings.CutPrefix(inside, parts[1]+"/"); ok {
			return filepath.Join(root, parts[0], rest)
		}
	}
	return ""
}

func TestComposeFile(t *testing.T) {
	c := loadCompose(t)
	built := builtHere(t, c)
	if len(built) == 0 {
		t.Fatal("no service builds the kiln image")
	}

	// Every image pinned and published, or built here.
	for name, s := range c.Services {
		if _, ok := built[s.Image]; ok {
			continue
		}
		if s.Build != nil || !pinned.MatchString(s.Image) {
			t.Errorf("service %s: image %q is neither built here nor a published image pinned to a version tag", name, s.Image)
		}
	}

	// The topology: one scheduler, gateways, two agents with KVM, each with
	// its own data volume and a memory budget within its container's limit.
	roles := map[string][]string{}
	for name, s := range c.Services {
		if isRole(s, built) && len(s.Command) > 0 {
			roles[s.Command[0]] = append(roles[s.Command[0]], name)
		}
	}
	if len(roles["scheduler"]) != 1 || len(roles["gateway"]) < 1 || len(roles["agent"]) != 2 {
		t.Fatalf("want one scheduler, a gateway and two agents, have %v", roles)
	}
	dataVolumes := map[string]string{}
	for _, name := range roles["agent"] {
		s := c.Services[name]
		_, flags, _ := kilnListeners(t, "service "+name, s.Command)
		if !slices.Contains(s.Devices, "/dev/kvm:/dev/kvm") {
			t.Errorf("agent %s: no /dev/kvm device (has %v)", name, s.Devices)
		}
		if flags["runtime"] != "" && flags["runtime"] != platform.RuntimeKVM {
			t.Errorf("agent %s: --runtime %s: a deployment runs functions in VMs", name, flags["runtime"])
		}
		data := flags["data"]
		var vol string
		for _, v := range s.Volumes {
			if src, dst, _ := strings.Cut(v, ":"); dst == data || strings.HasPrefix(data, dst+"/") {
				vol = src
			}
		}
		if vol == "" || strings.HasPrefix(vol, "./") {
			t.Errorf("agent %s: --data %q is not on a named volume (%v)", name, data, s.Volumes)
		} else if other, dup := dataVolumes[vol]; dup {
			t.Errorf("agents %s and %s share the data volume %s", other, name, vol)
		}
		dataVolumes[vol] = name
		mem, err := parseSize(flags["mem"])
		limit, err2 := parseSize(s.MemLimit)
		if err != nil || err2 != nil || mem >= limit {
			t.Errorf("agent %s: --mem %q must be set and below mem_limit %q (%v, %v)", name, flags["mem"], s.MemLimit, err, err2)
		}
		if adv := flags["advertise"]; adv == "" {
			t.Errorf("agent %s listens on 0.0.0.0 and so needs --advertise", name)
		} else if h, _, _ := net.SplitHostPort(adv); h != name {
			t.Errorf("agent %s advertises %s: the scheduler reaches it by its service name", name, adv)
		}
		if flags["name"] != name {
			t.Errorf("agent %s: --name %q: node names must be unique, use the service's", name, flags["name"])
		}
	}

	// Every file mounted and every named volume exists.
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join(root, src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("service %s uses volume %s, which is not declared", name, src)
			}
		}
		for dep := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("service %s depends on %s, which does not exist", name, dep)
			}
		}
	}

	// Every address one service gives for another is one that service
	// listens on; published ports too; health checks probe the service's
	// own /healthz or /readyz.
	ls := composeListeners(t, c, built)
	for name, s := range c.Services {
		for _, p := range s.Ports {
			parts := strings.Split(p, ":")
			reach(t, ls, name, "published port", name+":"+parts[len(parts)-1], "")
		}
		for k, v := range s.Environment {
			if strings.HasPrefix(v, "http://") {
				kind := "http"
				if strings.HasPrefix(k, "OTEL_EXPORTER_OTLP_") {
					kind = "otlp-http"
				}
				reach(t, ls, name, k, hostPort(t, name, v), kind)
			}
		}
		if s.Healthcheck == nil && s.Restart != "no" {
			t.Errorf("service %s: no health check", name)
		} else if s.Healthcheck != nil {
			for _, a := range s.Healthcheck.Test {
				if strings.HasPrefix(a, "http://") {
					reach(t, ls, name, "health check", hostPort(t, name, a), "http")
				}
			}
		}
		if isRole(s, built) {
			role, flags, _ := kilnListeners(t, "service "+name, s.Command)
			for _, f := range []string{"redis", "nats"} {
				if v := flags[f]; v != "" {
					reach(t, ls, name, "--"+f, hostPort(t, name, v), f)
				} else if role == "gateway" || (role == "agent" && f == "nats") {
					t.Errorf("service %s: kiln %s needs --%s", name, role, f)
				}
			}
			if role == "gateway" || role == "agent" {
				if v := flags["scheduler"]; v == "" {
					t.Errorf("service %s: kiln %s needs --scheduler", name, role)
				} else {
					reach(t, ls, name, "--scheduler", v, "grpc")
				}
			}
			if v := flags["advertise"]; v != "" {
				reach(t, ls, name, "--advertise", v, "grpc")
			}
			if v := flags["api-keys-file"]; v != "" {
				src := mountSource(s, v)
				if src == "" {
					t.Errorf("service %s: --api-keys-file %s is not mounted from the repository", name, v)
				} else if f, err := apikeys.OpenFile(src); err != nil {
					t.Errorf("service %s: keys file %s: %v", name, src, err)
				} else {
					f.Close()
				}
			}
			if s.Healthcheck == nil {
				continue
			}
			u := s.Healthcheck.Test[len(s.Healthcheck.Test)-1]
			if hp, err := url.Parse(u); err != nil || (hp.Path != "/readyz" && hp.Path != "/healthz") {
				t.Errorf("service %s: health check %v does not probe /readyz or /healthz", name, s.Healthcheck.Test)
			} else {
				reach(t, ls, name, "health check", hp.Host, "kiln-http")
			}
		}
	}

	checkPrometheus(t, c, ls, roles)
	checkGrafana(t, c, ls)
	checkComposeTLS(t, c, built)
}

// checkPrometheus: the config the prometheus service mounts scrapes every
// kiln role's HTTP port, only targets that exist, and loads rule files that
// exist in deploy/prometheus.
func checkPrometheus(t *testing.T, c composeFile, ls map[string][]listener, roles map[string][]string) {
	t.Helper()
	s, ok := c.Services["prometheus"]
	if !ok {
		t.Fatal("no prometheus service")
	}
	cfgPath := "/etc/prometheus/prometheus.yml"
	for _, a := range s.Command {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			cfgPath = v
		}
	}
	src := mountSource(s, cfgPath)
	if src == "" {
		t.Fatalf("prometheus: %s is not mounted from the repository", cfgPath)
	}
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(raw, &p); err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	scraped := map[string]bool{}
	for _, sc := range p.ScrapeConfigs {
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			t.Errorf("%s: job %s scrapes %s; Kiln serves /metrics", src, sc.JobName, sc.MetricsPath)
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				reach(t, ls, "prometheus", "scrape target", target, "kiln-http")
				scraped[target] = true
			}
		}
	}
	for _, role := range []string{"gateway", "scheduler", "agent"} {
		for _, name := range roles[role] {
			_, flags, _ := kilnListeners(t, "service "+name, c.Services[name].Command)
			addr := flags["http"]
			if role == "gateway" {
				addr = flags["listen"]
			}
			_, port, _ := net.SplitHostPort(addr)
			if !scraped[name+":"+port] {
				t.Errorf("%s: the %s service's /metrics (%s:%s) is not scraped", src, name, name, port)
			}
		}
	}
	if len(p.RuleFiles) == 0 {
		t.Errorf("%s: no rule files: the SLA rules of deploy/prometheus are not loaded", src)
	}
	for _, rf := range p.RuleFiles {
		srcGlob := mountSource(s, rf)
		if srcGlob == "" {
			t.Errorf("%s: rule files %s are not mounted from the repository", src, rf)
			continue
		}
		m, _ := filepath.Glob(srcGlob)
		if len(m) == 0 {
			t.Errorf("%s: rule files %s (%s) match no file", src, rf, srcGlob)
		}
	}
}

// checkGrafana: the provisioning directories H12 writes are mounted where
// Grafana reads them, the datasource points at the prometheus service, and
// the dashboards provider reads the directory the dashboards are mounted at.
func checkGrafana(t *testing.T, c composeFile, ls map[string][]listener) {
	t.Helper()
	s, ok := c.Services["grafana"]
	if !ok {
		t.Fatal("no grafana service")
	}
	prov := mountSource(s, "/etc/grafana/provisioning")
	if prov == "" {
		t.Fatal("grafana: /etc/grafana/provisioning is not mounted from the repository")
	}
	ds, _ := filepath.Glob(filepath.Join(prov, "datasources", "*.y*ml"))
	dbs, _ := filepath.Glob(filepath.Join(prov, "dashboards", "*.y*ml"))
	if len(ds) == 0 || len(dbs) == 0 {
		t.Fatalf("grafana: %s has no datasources/*.yml (%d) or dashboards/*.yml (%d)", prov, len(ds), len(dbs))
	}
	for _, f := range ds {
		var d struct {
			Datasources []struct {
				Type string `yaml:"type"`
				URL  string `yaml:"url"`
			} `yaml:"datasources"`
		}
		if err := unmarshalFile(f, &d); err != nil {
			t.Error(err)
		}
		for _, x := range d.Datasources {
			if x.Type == "prometheus" {
				reach(t, ls, "grafana", "datasource "+f, hostPort(t, "grafana", x.URL), "http")
			}
		}
	}
	for _, f := range dbs {
		var d struct {
			Providers []struct {
				Options struct {
					Path string `yaml:"path"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		if err := unmarshalFile(f, &d); err != nil {
			t.Error(err)
		}
		for _, pr := range d.Providers {
			dir := mountSource(s, pr.Options.Path)
			if dir == "" {
				t.Errorf("grafana: %s reads dashboards from %s, which is not mounted from the repository", f, pr.Options.Path)
				continue
			}
			if js, _ := filepath.Glob(filepath.Join(dir, "*.json")); len(js) == 0 {
				t.Errorf("grafana: no dashboard (*.json) in %s, mounted at %s", dir, pr.Options.Path)
			}
		}
	}
}

func unmarshalFile(name string, v any) error {
	raw, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%s: %v", name, err)
	}
	return nil
}

// TestDockerfile: what the image build copies and runs exists here, and
// every base image is pinned.
func TestDockerfile(t *testing.T) {
	c := loadCompose(t)
	for _, df := range builtHere(t, c) {
		raw, err := os.ReadFile(df)
		if err != nil {
			t.Fatal(err)
		}
		stages := map[string]bool{}
		for _, line := range strings.Split(string(raw), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			switch strings.ToUpper(f[0]) {
			case "FROM":
				if !pinned.MatchString(f[1]) {
					t.Errorf("%s: base image %s is not pinned to a version tag", df, f[1])
				}
				if len(f) == 4 && strings.EqualFold(f[2], "AS") {
					stages[f[3]] = true
				}
			case "COPY":
				if strings.HasPrefix(f[1], "--from=") {
					if !stages[strings.TrimPrefix(f[1], "--from=")] {
						t.Errorf("%s: %s copies from an unknown stage", df, line)
					}
					continue
				}
				for _, src := range f[1 : len(f)-1] {
					if _, err := os.Stat(filepath.Join(root, src)); err != nil {
						t.Errorf("%s: COPY %s: %v", df, src, err)
					}
				}
			}
		}
		// The make targets the build runs exist.
		mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`(?:RUN|&&)\s+make\s+([a-z][a-z -]*)`).FindAllStringSubmatch(string(raw), -1) {
			for _, target := range strings.Fields(m[1]) {
				if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `:`).Match(mk) {
					t.Errorf("%s runs `make %s`, which the Makefile does not have", df, target)
				}
			}
		}
		// What the compose file and k8s expect in the image: the kernel
		// beside kiln, where the gateway looks for it.
		if !strings.Contains(string(raw), "kiln-kernel.elf /usr/local/bin/") {
			t.Errorf("%s: the guest kernel is not installed beside /usr/local/bin/kiln", df)
		}
		if _, err := os.Stat(df + ".dockerignore"); err != nil {
			t.Errorf("%s: no %s.dockerignore: the build context would carry build/ and .git", df, path.Base(df))
		}
	}
}

func parseSize(s string) (uint64, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	mult := uint64(1)
	for suffix, m := range map[string]uint64{"K": 1 << 10, "M": 1 << 20, "G": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %v", s, err)
	}
	return n * mult, nil
}
