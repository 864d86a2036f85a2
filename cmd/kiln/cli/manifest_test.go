package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
)

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// describeJSON returns kiln describe REF -o json.
func describeJSON(t *testing.T, k func(...string) result, ref string) cli.Description {
	t.Helper()
	r := k("describe", ref, "-o", "json")
	var d cli.Description
	if err := json.Unmarshal([]byte(r.out), &d); r.code != 0 || err != nil {
		t.Fatalf("describe %s: %+v (%v)", ref, r, err)
	}
	return d
}

// kiln.yaml: every DeployParams key is read, flags win over the file, env
// merges by key, `kiln deploy` alone takes the name from the file, and a
// bad file is refused naming file, line and key with nothing deployed.
func TestManifestDeploy(t *testing.T) {
	prog := staticC(t)
	_, k := upNoAgent(t, prog)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "kiln.yaml"), `# a function's settings
name: shop
kind: exec
memory: 96M
timeout: 4s
env:
  LANG: C
  MODE: file
args: [-x, "two words"]
private: true
max_concurrency: 3
rate: 120/m
burst: 7
max_body: 2K
async_retries: 6
min_warm: 1
max_instances: 4
keep_alive: 20s
fresh: false
deadline: 80ms
target: 99.5
`)
	t.Chdir(dir)
	r := k("deploy", "--binary", prog, "-o", "json")
	var dr cli.DeployResult
	if err := json.Unmarshal([]byte(r.out), &dr); r.code != 0 || err != nil || dr.Name != "shop" || dr.Version != 1 || dr.Kind != "exec" ||
		dr.MemoryBytes != 96<<20 || dr.TimeoutMs != 4000 || !dr.Limits.Private || dr.Limits.MaxConcurrency != 3 ||
		dr.Limits.RatePerSecond != 2 || dr.Limits.RateBurst != 7 || dr.Limits.MaxBodyBytes != 2048 || dr.AsyncRetries != 6 ||
		dr.Scaling.MinWarm != 1 || dr.Scaling.MaxInstances != 4 || dr.Scaling.KeepAliveMs != 20000 || dr.SLA.DeadlineMs != 80 ||
		dr.SLA.Target != 0.995 || !strings.HasSuffix(dr.URL, "/function/shop") {
		t.Fatalf("kiln deploy with ./kiln.yaml: %+v (%v)\n%+v", r, err, dr)
	}
	d := describeJSON(t, k, "shop")
	if strings.Join(d.Env, " ") != "LANG=C MODE=file" || strings.Join(d.Args, "|") != "-x|two words" {
		t.Errorf("env/args from the file: %q %q", d.Env, d.Args)
	}

	// Flags win; --env replaces the file's entry of the same key and adds
	// new ones; --private=false beats private: true.
	r = k("deploy", "--binary", prog, "--mem", "32M", "--timeout", "1s", "--env", "MODE=flag", "--env", "EXTRA=1",
		"--private=false", "--min-warm", "0", "--target", "90")
	if r.code != 0 {
		t.Fatalf("deploy with flags over the file: %+v", r)
	}
	d = describeJSON(t, k, "shop")
	if d.Version != 2 || d.MemoryBytes != 32<<20 || d.TimeoutMs != 1000 || strings.Join(d.Env, " ") != "LANG=C MODE=flag EXTRA=1" ||
		d.Limits.Private || d.Scaling.MinWarm != 0 || d.SLA.Target != 0.9 || d.Scaling.MaxInstances != 4 || d.Kind != "exec" {
		t.Errorf("flags over the file: %+v", d)
	}

	// NAME on the command line wins over name: (and says so); the file's
	// other settings still apply.
	r = k("deploy", "other", dir, "--binary", prog)
	if r.code != 2 {
		t.Errorf("NAME DIR --binary: %+v; want the usage error", r)
	}
	r = k("deploy", "other", "--binary", prog)
	if r.code != 0 {
		t.Fatalf("deploy other --binary (no manifest read): %+v", r)
	}
	if d := describeJSON(t, k, "other"); d.Kind != "serve" || d.MemoryBytes != 64<<20 {
		t.Errorf("deploy NAME --binary read a manifest it was not given: %+v", d)
	}

	// Bad manifests: refused before anything is uploaded.
	for _, tc := range []struct{ yaml, want string }{
		{"name: shop\nmemroy: 64M\n", `kiln.yaml:2: unknown key "memroy" (did you mean memory?); the keys are`},
		{"name: shop\nmax-instances: 3\n", `unknown key "max-instances" (did you mean max_instances?)`},
		{"name: shop\nmem: 3\n", `unknown key "mem" (did you mean memory?)`},
		{"name: shop\nname: again\n", `kiln.yaml:2: key "name" given twice`},
		{"name: shop\nmemory: [1, 2]\n", `kiln.yaml:2: memory takes one value, e.g. memory: 64M`},
		{"name: shop\nenv: LANG=C\n", `env: give a mapping (LANG: C) or a list (- LANG=C)`},
		{"- name\n", `the manifest must be a mapping`},
		{"name: [\n", `kiln.yaml`},
		{"kind: exec\n", "add `name: NAME` to kiln.yaml"},
	} {
		writeFile(t, filepath.Join(dir, "kiln.yaml"), tc.yaml)
		r := k("deploy", "--binary", prog)
		if r.code != 2 || !strings.Contains(r.err, tc.want) {
			t.Errorf("manifest %q: exit %d, stderr %q; want exit 2 and %q", tc.yaml, r.code, r.err, tc.want)
		}
	}
	// Values the gateway refuses come back as its sentence, and no new
	// version appears.
	writeFile(t, filepath.Join(dir, "kiln.yaml"), "name: shop\nmemory: lots\n")
	if r := k("deploy", "--binary", prog); r.code != 1 || !strings.Contains(r.err, `bad memory size "lots"`) {
		t.Errorf("memory: lots: %+v", r)
	}
	if d := describeJSON(t, k, "shop"); d.Version != 2 || d.VersionCount != 2 {
		t.Errorf("a refused deploy changed shop: %+v", d)
	}
	os.Remove(filepath.Join(dir, "kiln.yaml"))
	if r := k("deploy", "--binary", prog); r.code != 2 || !strings.Contains(r.err, "no kiln.yaml here") {
		t.Errorf("no NAME and no kiln.yaml: %+v", r)
	}
}

// The kiln.yaml that `kiln new` writes deploys as it is (after building
// the starter), with the settings it states.
func TestNewManifestDeploys(t *testing.T) {
	prog := staticC(t)
	_, k := upNoAgent(t, prog)
	root := t.TempDir()
	t.Chdir(root)
	if r := k("new", "greeter", "--lang", "c"); r.code != 0 || !strings.Contains(r.out, "greeter/kiln.yaml") {
		t.Fatalf("kiln new: %+v", r)
	}
	b, err := os.ReadFile(filepath.Join(root, "greeter", "kiln.yaml"))
	if err != nil || !strings.Contains(string(b), "name: greeter\n") || !strings.Contains(string(b), "# deadline: 50ms") {
		t.Fatalf("kiln.yaml from kiln new: %v\n%s", err, b)
	}
	t.Chdir(filepath.Join(root, "greeter"))
	r := k("deploy")
	if r.code != 0 || !strings.Contains(r.out, "deployed greeter version 1 (serve, 64 MiB, timeout 30s)") {
		t.Fatalf("kiln deploy in the new directory: %+v", r)
	}
	// Uncommenting a setting is all it takes.
	writeFile(t, "kiln.yaml", strings.Replace(string(b), "# deadline: 50ms", "deadline: 50ms", 1))
	if r := k("deploy", "--target", "99"); r.code != 0 || !strings.Contains(r.out, "SLA: 99% within 50ms") {
		t.Fatalf("deploy with deadline uncommented: %+v", r)
	}
	// kiln deploy NAME DIR reads DIR's kiln.yaml; NAME wins over its name.
	t.Chdir(root)
	r = k("deploy", "other", "greeter", "--target", "95")
	if r.code != 0 || !strings.Contains(r.out, "deployed other version 1 (serve") || !strings.Contains(r.out, "SLA: 95% within 50ms") ||
		!strings.Contains(r.err, "deploying as other, as the command line says (greeter/kiln.yaml names greeter)") {
		t.Fatalf("deploy other greeter: %+v", r)
	}
}
