package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/teststack"
	"github.com/kilnfaas/kiln/store/registry"
)

// startRunning is start plus a real node-agent that runs functions as
// host processes (no KVM needed), registered with the scheduler over gRPC
// as in `kiln up`: invocations really run.
func startRunning(t *testing.T, cfg gateway.Config) *env {
	t.Helper()
	return startStack(t, cfg, teststack.Options{})
}

var (
	whoamiOnce sync.Once
	whoami     []byte
	whoamiErr  error
)

// whoamiELF is a static exec function that answers "v=" and its $V, so a
// response proves which deployed version ran it.
func whoamiELF(t *testing.T) []byte {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skipf("gcc not installed (make deps installs it): %v", err)
	}
	whoamiOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-whoami-")
		if err != nil {
			whoamiErr = err
			return
		}
		defer os.RemoveAll(dir)
		src := filepath.Join(dir, "w.c")
		os.WriteFile(src, []byte(`#include <stdio.h>
#include <stdlib.h>
int main(void) {
	char buf[4096];
	while (fread(buf, 1, sizeof buf, stdin) > 0) {}
	const char *v = getenv("V");
	printf("v=%s", v ? v : "unset");
	return 0;
}
`), 0o644)
		out := filepath.Join(dir, "w")
		if b, err := exec.Command("gcc", "-static", "-O2", "-o", out, src).CombinedOutput(); err != nil {
			whoamiErr = fmt.Errorf("gcc: %v\n%s", err, b)
			return
		}
		whoami, whoamiErr = os.ReadFile(out)
	})
	if whoamiErr != nil {
		t.Fatal(whoamiErr)
	}
	return whoami
}

// deployVersions deploys n versions of name; version i runs with V=i.
func deployVersions(t *testing.T, e *env, name string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		resp, b := deploy(t, e, fmt.Sprintf("name=%s&kind=exec&memory=16M&timeout=20s&env=V%%3D%d", name, i), whoamiELF(t))
		if resp.StatusCode != 201 {
			t.Fatalf("deploy %d: %d %s", i, resp.StatusCode, b)
		}
		var d gateway.Deployed
		if json.Unmarshal(b, &d); d.Version != uint64(i) {
			t.Fatalf("deploy %d answered version %d", i, d.Version)
		}
	}
}

func putAlias(t *testing.T, e *env, name, alias, body string) (*http.Response, []byte) {
	t.Helper()
	return do(t, "PUT", e.url+"/system/functions/"+name+"/aliases/"+alias, "application/json", strings.NewReader(body))
}

// invokeVersion calls ref and returns the version that answered, checking
// that the function's own answer and X-Kiln-Version agree.
func invokeVersion(client *http.Client, url string) (uint64, error) {
	resp, err := client.Post(url, "text/plain", strings.NewReader("hi"))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	hv := resp.Header.Get(gateway.HeaderVersion)
	if string(b) != "v="+hv {
		return 0, fmt.Errorf("function answered %q but %s says %q", b, gateway.HeaderVersion, hv)
	}
	return strconv.ParseUint(hv, 10, 64)
}

// A writer flips NAME@prod between routes over v1..v3 while callers invoke
// NAME@prod: no call fails, and each is served by a version the alias
// routed to at some instant during that call. v4 is latest and never in
// prod, so a call that fell back to latest, or mixed two routes, shows.
func TestAliasFlipUnderLoad(t *testing.T) {
	e := startRunning(t, gateway.Config{})
	deployVersions(t, e, "flip", 4)
	routes := []string{
		`{"version": 1}`,
		`{"versions": [{"version": 2, "weight": 50}, {"version": 3, "weight": 50}]}`,
		`{"version": 3}`,
		`{"versions": [{"version": 1, "weight": 20}, {"version": 2, "weight": 80}]}`,
	}
	members := []map[uint64]bool{{1: true}, {2: true, 3: true}, {3: true}, {1: true, 2: true}}
	if resp, b := putAlias(t, e, "flip", "prod", routes[0]); resp.StatusCode != 200 {
		t.Fatalf("create prod: %d %s", resp.StatusCode, b)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	url := e.url + "/function/flip@prod"
	// Warm up: the first call fetches the image; wait until the agent has
	// registered with the scheduler.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := invokeVersion(client, url); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the agent never served: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	const flips = 60
	// gen g is the route set by flip g (gen 0: before any flip). started
	// counts flips begun, done flips completed: a call that read done = d
	// before sending and started = s after its answer overlapped gens d..s.
	gen := make([]int, flips+1)
	var started, done atomic.Int64
	var stop atomic.Bool
	var calls atomic.Int64
	seen := make([]atomic.Int64, 5)
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				d := done.Load()
				v, err := invokeVersion(client, url)
				s := started.Load()
				if err != nil {
					t.Errorf("call during flips %d..%d failed: %v", d, s, err)
					return
				}
				ok := false
				for g := d; g <= s; g++ {
					ok = ok || members[gen[g]][v]
				}
				if !ok {
					t.Errorf("v%d answered a call made while prod routed to flips %d..%d only (routes %v)", v, d, s, gen[d:s+1])
					return
				}
				seen[v].Add(1)
				calls.Add(1)
			}
		}()
	}
	for i := 1; i <= flips && !t.Failed(); i++ {
		r := i % len(routes)
		gen[i] = r
		started.Store(int64(i))
		resp, b := putAlias(t, e, "flip", "prod", routes[r])
		if resp.StatusCode != 200 {
			t.Errorf("flip %d: %d %s", i, resp.StatusCode, b)
		}
		done.Store(int64(i))
		time.Sleep(15 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d calls across %d flips; served by v1..v4: %d %d %d %d", calls.Load(), flips,
		seen[1].Load(), seen[2].Load(), seen[3].Load(), seen[4].Load())
	if calls.Load() < flips {
		t.Fatalf("only %d calls ran during %d flips: the test did not load the alias", calls.Load(), flips)
	}
	if seen[4].Load() != 0 {
		t.Fatalf("v4 (latest, never in prod) served %d calls", seen[4].Load())
	}
}

// Over N invocations of a 90/10 alias the canary's share is binomial: the
// count must fall within 5 standard deviations of N×10%.
func TestWeightedSplitIsBinomial(t *testing.T) {
	e := startRunning(t, gateway.Config{})
	deployVersions(t, e, "split", 2)
	if resp, b := putAlias(t, e, "split", "prod", `{"versions": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]}`); resp.StatusCode != 200 {
		t.Fatalf("alias: %d %s", resp.StatusCode, b)
	}
	const n, p = 400, 0.10
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	var (
		wg     sync.WaitGroup
		canary atomic.Int64
		next   atomic.Int64
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= n {
				v, err := invokeVersion(client, e.url+"/function/split@prod")
				if err != nil {
					t.Error(err)
					return
				}
				if v == 2 {
					canary.Add(1)
				} else if v != 1 {
					t.Errorf("v%d served a call to a v1/v2 alias", v)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	mean, sd := n*p, math.Sqrt(n*p*(1-p))
	got := float64(canary.Load())
	t.Logf("canary served %d of %d (expected %.0f ± %.1f)", canary.Load(), n, mean, sd)
	if math.Abs(got-mean) > 5*sd {
		t.Fatalf("canary served %v of %d calls: outside %.0f ± 5×%.1f", got, n, mean, sd)
	}
}

// The random source is injectable: with it fixed, the pick is fixed, and
// X-Kiln-Version says which version was picked even when no node can run it.
func TestSplitPicksWithInjectedRandom(t *testing.T) {
	var draw atomic.Int64
	e := start(t, gateway.Config{RandN: func(n int) int {
		if n != 100 {
			panic(fmt.Sprintf("RandN(%d), want 100", n))
		}
		return int(draw.Load())
	}})
	for i := 0; i < 3; i++ {
		if resp, b := deploy(t, e, "name=pick&kind=exec", staticELF(t)); resp.StatusCode != 201 {
			t.Fatalf("deploy: %d %s", resp.StatusCode, b)
		}
	}
	if resp, b := putAlias(t, e, "pick", "prod", `{"versions": [{"version": 3, "weight": 75}, {"version": 1, "weight": 25}]}`); resp.StatusCode != 200 {
		t.Fatalf("alias: %d %s", resp.StatusCode, b)
	}
	for _, tc := range []struct {
		draw int64
		ref  string
		want string
	}{{0, "@prod", "3"}, {74, "@prod", "3"}, {75, "@prod", "1"}, {99, "@prod", "1"}, {99, "", "3"}, {0, "@2", "2"}, {0, "@latest", "3"}} {
		draw.Store(tc.draw)
		// No node: 503, but the version was chosen before placement.
		resp, b := do(t, "POST", e.url+"/function/pick"+tc.ref, "", nil)
		if resp.StatusCode != 503 || resp.Header.Get(gateway.HeaderVersion) != tc.want {
			t.Fatalf("draw %d: pick%s → %d %s=%q, want 503 with v%s: %s", tc.draw, tc.ref, resp.StatusCode,
				gateway.HeaderVersion, resp.Header.Get(gateway.HeaderVersion), tc.want, b)
		}
	}
}

func TestInvokeRefErrors(t *testing.T) {
	e := start(t, gateway.Config{})
	if resp, b := deploy(t, e, "name=refs&kind=exec", staticELF(t)); resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, b)
	}
	for _, tc := range []struct {
		path string
		code int
		want string
	}{
		{"refs@", 400, "names nothing after '@'"},
		{"refs@0", 400, "numbered from 1"},
		{"refs@Prod", 400, "not an alias name"},
		{"refs@a@b", 400, "not an alias name"},
		{"refs@99999999999999999999999", 400, "numbered from 1"},
		{"refs@2", 404, `function "refs" has no version 2: list its versions with ` + "`kiln versions refs`"},
		{"refs@prod", 404, `function "refs" has no alias "prod"`},
		{"nope@prod", 404, `function "nope" is not deployed`},
		{"nope", 404, `function "nope" is not deployed`},
	} {
		resp, b := do(t, "POST", e.url+"/function/"+tc.path, "", nil)
		if resp.StatusCode != tc.code {
			t.Fatalf("%s: %d %s, want %d", tc.path, resp.StatusCode, b, tc.code)
		}
		if ae := decodeError(t, b); !strings.Contains(ae.Error, tc.want) || ae.Function != strings.Split(tc.path, "@")[0] {
			t.Fatalf("%s: error %+v, want it to name function %q and contain %q", tc.path, ae, strings.Split(tc.path, "@")[0], tc.want)
		}
	}
	// A sub-path after NAME@REF reaches the function as its path: placement
	// fails (no node), after the ref resolved.
	resp, b := do(t, "POST", e.url+"/function/refs@1/a/b?x=1", "", nil)
	if resp.StatusCode != 503 || resp.Header.Get(gateway.HeaderVersion) != "1" {
		t.Fatalf("refs@1/a/b: %d %s", resp.StatusCode, b)
	}
}

type aliasJSON struct {
	Name     string `json:"name"`
	Versions []struct {
		Version uint64 `json:"version"`
		Weight  uint32 `json:"weight"`
	} `json:"versions"`
	History [][]struct {
		Version uint64 `json:"version"`
		Weight  uint32 `json:"weight"`
	} `json:"history"`
}

func (a aliasJSON) String() string {
	s := a.Name + "="
	for i, v := range a.Versions {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("%d:%d", v.Version, v.Weight)
	}
	return s + fmt.Sprintf(" history=%d", len(a.History))
}

func getAliasJSON(t *testing.T, e *env, name, alias string) (int, aliasJSON) {
	t.Helper()
	resp, b := do(t, "GET", e.url+"/system/functions/"+name+"/aliases/"+alias, "", nil)
	var a aliasJSON
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &a); err != nil {
			t.Fatalf("alias JSON %s: %v", b, err)
		}
	}
	return resp.StatusCode, a
}

func TestAliasAPI(t *testing.T) {
	e := start(t, gateway.Config{})
	for i := 0; i < 3; i++ {
		if resp, b := deploy(t, e, "name=api&kind=exec", staticELF(t)); resp.StatusCode != 201 {
			t.Fatalf("deploy: %d %s", resp.StatusCode, b)
		}
	}
	resp, b := putAlias(t, e, "api", "prod", `{"version": 1}`)
	if resp.StatusCode != 200 {
		t.Fatalf("create: %d %s", resp.StatusCode, b)
	}
	resp, b = putAlias(t, e, "api", "prod", `{"versions": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("split: %d %s", resp.StatusCode, b)
	}
	if code, a := getAliasJSON(t, e, "api", "prod"); code != 200 || a.String() != "prod=1:90,2:10 history=1" {
		t.Fatalf("GET prod: %d %v", code, a)
	}

	// Every bad request is a clear 4xx JSON error and changes nothing.
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"PUT", "api/aliases/prod", `{"version": 9}`, 404, "has no version 9"},
		{"PUT", "api/aliases/prod", `{"versions": [{"version": 1, "weight": 90}, {"version": 9, "weight": 10}]}`, 404, "has no version 9"},
		{"PUT", "api/aliases/prod", `{"versions": [{"version": 1, "weight": 60}, {"version": 2, "weight": 60}]}`, 400, "together 100"},
		{"PUT", "api/aliases/prod", `{"versions": [{"version": 1, "weight": 50}, {"version": 2, "weight": 30}, {"version": 3, "weight": 20}]}`, 400, "splits between two"},
		{"PUT", "api/aliases/prod", `{"version": 0}`, 400, "versions start at 1"},
		{"PUT", "api/aliases/prod", `{"version": -1}`, 400, "bad JSON body"},
		{"PUT", "api/aliases/prod", `{"version": 1, "versions": [{"version": 2}]}`, 400, "not both"},
		{"PUT", "api/aliases/prod", `{}`, 400, "no version given"},
		{"PUT", "api/aliases/prod", ``, 400, "empty body"},
		{"PUT", "api/aliases/prod", `{"version": 1} trailing`, 400, "trailing data"},
		{"PUT", "api/aliases/prod", `{"verison": 1}`, 400, `unknown field "verison"`},
		{"PUT", "api/aliases/prod", `{"version": 1, "weight": 50}`, 400, `unknown field "weight"`},
		{"PUT", "api/aliases/prod", `{"versions": [{"version": 1, "weight": 50}]}`, 400, "single version takes all traffic"},
		{"PUT", "api/aliases/prod", `{"version": 1}` + strings.Repeat(" ", 70<<10), 413, "body larger than"},
		{"PUT", "api/aliases/latest", `{"version": 1}`, 409, "moves only with deploys"},
		{"PUT", "api/aliases/Prod", `{"version": 1}`, 400, "invalid name"},
		{"PUT", "api/aliases/42", `{"version": 1}`, 400, "would read as a version"},
		{"PUT", "nope/aliases/prod", `{"version": 1}`, 404, "function nope"},
		{"DELETE", "api/aliases/latest", ``, 409, "moves only with deploys"},
		{"DELETE", "api/aliases/beta", ``, 404, `no alias "beta"`},
		{"GET", "api/aliases/beta", ``, 404, `no alias "beta"`},
		{"GET", "nope/aliases", ``, 404, "function nope"},
		{"GET", "nope/versions", ``, 404, "function nope"},
		{"POST", "api/rollback", `{"alias": "latest"}`, 409, "point another alias"},
		{"POST", "api/rollback", `{"alias": "beta"}`, 404, `no alias "beta"`},
		{"POST", "api/rollback", `{}`, 400, "no alias given"},
		{"POST", "api/rollback", `{"alias": "Prod"}`, 400, "invalid name"},
		{"POST", "api/rollback", `prod`, 400, "bad JSON body"},
		{"POST", "api/aliases/prod", `{"version": 1}`, 405, "use GET, PUT, DELETE"},
		{"PUT", "api/versions", `{}`, 405, "use GET"},
	} {
		resp, b := do(t, tc.method, e.url+"/system/functions/"+tc.path, "application/json", strings.NewReader(tc.body))
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s %.60q: %d %s, want %d", tc.method, tc.path, tc.body, resp.StatusCode, b, tc.code)
			continue
		}
		if ae := decodeError(t, b); !strings.Contains(ae.Error, tc.want) {
			t.Errorf("%s %s %.60q: error %q, want it to contain %q", tc.method, tc.path, tc.body, ae.Error, tc.want)
		}
	}
	if code, a := getAliasJSON(t, e, "api", "prod"); code != 200 || a.String() != "prod=1:90,2:10 history=1" {
		t.Fatalf("rejected requests changed prod: %d %v", code, a)
	}
	if code, a := getAliasJSON(t, e, "api", "latest"); code != 200 || a.String() != "latest=3:100 history=0" {
		t.Fatalf("rejected requests changed latest: %d %v", code, a)
	}

	// versions lists every version and every alias.
	resp, b = do(t, "GET", e.url+"/system/functions/api/versions", "", nil)
	var vl gateway.VersionList
	if err := json.Unmarshal(b, &vl); err != nil || resp.StatusCode != 200 || vl.Name != "api" || len(vl.Versions) != 3 || len(vl.Aliases) != 2 {
		t.Fatalf("versions: %d %s", resp.StatusCode, b)
	}
	resp, b = do(t, "GET", e.url+"/system/functions/api/aliases", "", nil)
	var as []aliasJSON
	if err := json.Unmarshal(b, &as); err != nil || resp.StatusCode != 200 || len(as) != 2 || as[0].Name != "latest" || as[1].Name != "prod" {
		t.Fatalf("aliases: %d %s", resp.StatusCode, b)
	}

	// Rollback goes back one change at a time, then refuses.
	resp, b = do(t, "POST", e.url+"/system/functions/api/rollback", "application/json", strings.NewReader(`{"alias": "prod"}`))
	var a aliasJSON
	if json.Unmarshal(b, &a); resp.StatusCode != 200 || a.String() != "prod=1:100 history=0" {
		t.Fatalf("rollback: %d %s", resp.StatusCode, b)
	}
	resp, b = do(t, "POST", e.url+"/function/api@prod", "", nil)
	if resp.Header.Get(gateway.HeaderVersion) != "1" {
		t.Fatalf("after rollback api@prod picked v%s: %s", resp.Header.Get(gateway.HeaderVersion), b)
	}
	resp, b = do(t, "POST", e.url+"/system/functions/api/rollback", "application/json", strings.NewReader(`{"alias": "prod"}`))
	if resp.StatusCode != 409 || !strings.Contains(decodeError(t, b).Error, "nothing to roll back to") {
		t.Fatalf("rollback without history: %d %s", resp.StatusCode, b)
	}

	if resp, b := do(t, "DELETE", e.url+"/system/functions/api/aliases/prod", "", nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d %s", resp.StatusCode, b)
	}
	if resp, _ := do(t, "POST", e.url+"/function/api@prod", "", nil); resp.StatusCode != 404 {
		t.Fatalf("invoke of a deleted alias: %d, want 404", resp.StatusCode)
	}
	if _, err := e.reg.GetFunction(context.Background(), "api", ""); err != nil {
		t.Fatalf("alias delete touched the function: %v", err)
	}
}

func FuzzParseFunctionRef(f *testing.F) {
	for _, s := range []string{"hello", "hello@prod", "hello@3", "hello@", "hello@0", "a@b@c", "@prod", "x@Prod", "x@18446744073709551616", "x@latest"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, seg string) {
		name, ref, err := gateway.ParseFunctionRef(seg)
		if err != nil {
			return
		}
		if !strings.HasPrefix(seg, name) || strings.Contains(name, "@") {
			t.Fatalf("ParseFunctionRef(%q) name = %q", seg, name)
		}
		if ref == "" {
			if strings.Contains(seg, "@") {
				t.Fatalf("ParseFunctionRef(%q) dropped the reference", seg)
			}
			return
		}
		// Whatever passes reaches the registry as a well-formed reference.
		v, alias, err := registry.ParseRef(ref)
		if err != nil || (v == 0) == (alias == "") {
			t.Fatalf("ParseFunctionRef(%q) passed ref %q, which ParseRef reads as %d, %q, %v", seg, ref, v, alias, err)
		}
		if alias != "" && strings.Trim(alias, "0123456789") == "" {
			t.Fatalf("ParseFunctionRef(%q) passed %q, a number that is not a version", seg, ref)
		}
	})
}
