package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/teststack"
)

// `kiln sla` as a user runs it, against the cluster roles in this process:
// a gateway keeping its ledger in a real redis-server, a scheduler, and an
// agent whose functions run as host processes (no KVM here), with images
// on a real (embedded) NATS server. Calls go through the gateway; the
// table and the JSON show what they did. The deadline (1 s) leaves room
// for the first call's cold start on a loaded host; /slow (1.5 s) misses.
func TestSLAAgainstCluster(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "slafn")
	build := exec.Command("go", "build", "-o", prog, "./testdata/slafn")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build testdata/slafn: %v\n%s", err, b)
	}
	t.Setenv("KILN_CONFIG", filepath.Join(dir, "config.yaml"))
	t.Setenv("KILN_API_KEY", "")
	ctx := context.Background()

	// the process runtime ignores the kernel
	roles := teststack.StartRoles(t, teststack.RolesOptions{KernelPath: prog})
	redisURL, gw := roles.RedisURL, roles.Gateway

	k := func(args ...string) result { return kiln(t, nil, append([]string{"--server", gw.HTTPURL}, args...)...) }
	if r := k("sla"); r.code != 0 || !strings.Contains(r.out, "no function has an SLA") {
		t.Fatalf("kiln sla before any deploy: %+v", r)
	}
	if r := k("deploy", "slafn", "--binary", prog, "--kind", "serve", "--deadline", "1s", "--target", "99"); r.code != 0 {
		t.Fatalf("deploy slafn: %+v", r)
	}
	if r := k("deploy", "plain", "--binary", prog, "--kind", "serve"); r.code != 0 {
		t.Fatalf("deploy plain: %+v", r)
	}
	call := func(path string) time.Duration {
		t.Helper()
		t0 := time.Now()
		resp, err := http.Post(gw.HTTPURL+path, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s: %s", path, resp.Status)
		}
		return time.Since(t0)
	}
	// A call the client saw end within the deadline is surely good; one it
	// saw take longer may still be (the gateway's clock runs shorter).
	surelyGood := int64(0)
	for i := 0; i < 4; i++ {
		if call("/function/slafn") <= time.Second {
			surelyGood++
		}
	}
	call("/function/slafn/slow")
	call("/function/plain")

	var rep gateway.SLAReport
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r := k("sla", "slafn", "-o", "json")
		if r.code != 0 || json.Unmarshal([]byte(r.out), &rep) != nil {
			t.Fatalf("kiln sla slafn -o json: %+v", r)
		}
		if rep.Day.Invocations >= 5 || time.Now().After(end) {
			break
		}
	}
	cold, good := rep.Day.Boots+rep.Day.Restores, rep.Day.Good
	if rep.Function != "slafn" || rep.DeadlineMs != 1000 || rep.Target != 0.99 || rep.Day.Invocations != 5 ||
		good < surelyGood || good > 4 || rep.Day.Errors != 0 || cold < 1 || cold > 2 {
		t.Fatalf("report %+v (%d fast calls within 1 s at the client)", rep, surelyGood)
	}

	r := k("sla")
	// With all 4 fast calls good: 80.00 %, and 1 bad call of 5 against an
	// allowance of 1 % of 5 leaves −1900 % of the budget.
	att := regexp.QuoteMeta(fmt.Sprintf("%.2f%%", float64(good)*20))
	budget := regexp.QuoteMeta(fmt.Sprintf("%.0f%%", (1-float64(5-good)/0.05)*100))
	// WARM: the separate gateway asks the scheduler (ListNodes); the
	// function's instance is still warm.
	row := fmt.Sprintf(`(?m)^slafn\s+1s\s+99%%\s+%s\s+%s\s+%s\s+%.1f%%\s+5\s+[1-9][0-9]*\s*$`, att, att, budget, float64(cold)*20)
	if r.code != 0 || !regexp.MustCompile(`(?m)^NAME\s+DEADLINE\s+TARGET\s+ATTAINMENT 1H\s+ATTAINMENT 1D\s+BUDGET LEFT\s+COLD STARTS\s+CALLS 1D\s+WARM$`).MatchString(r.out) ||
		!regexp.MustCompile(row).MatchString(r.out) || strings.Contains(r.out, "plain") {
		t.Fatalf("kiln sla:\n%s\n%s", r.out, r.err)
	}
	r = k("sla", "-o", "json")
	var list gateway.SLAList
	if r.code != 0 || json.Unmarshal([]byte(r.out), &list) != nil || len(list.Functions) != 1 || list.Functions[0].Day != rep.Day {
		t.Fatalf("kiln sla -o json: %+v", r)
	}

	// The gateway role keeps the ledger in Redis.
	opts, _ := redis.ParseURL(redisURL)
	rc := redis.NewClient(opts)
	defer rc.Close()
	keys, err := rc.Keys(ctx, "kiln:sla:slafn:*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("no ledger keys in Redis: %v %v", keys, err)
	}

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"sla", "plain"}, 1, `function "plain" has no SLA`},
		{[]string{"sla", "nope"}, 1, "not found"},
		{[]string{"sla", "-o", "yaml"}, 2, `-o "yaml": use table or json`},
		{[]string{"sla", "a", "b"}, 2, "usage: kiln sla [NAME]"},
	} {
		if r := k(tc.args...); r.code != tc.code || !strings.Contains(r.err, tc.msg) {
			t.Errorf("kiln %v: %+v, want exit %d with %q", tc.args, r, tc.code, tc.msg)
		}
	}
}
