package platform_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/gateway"
)

// kiln up records SLA calls in its embedded ledger and, since the
// scheduler shares its process, reports the function's warm instances.
func TestUpSLAReport(t *testing.T) {
	prog := filepath.Join(t.TempDir(), "slafn")
	// The serve function of the `kiln sla` tests: any path answers at once.
	build := exec.Command("go", "build", "-o", prog, "../cli/testdata/slafn")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build slafn: %v\n%s", err, b)
	}
	data := t.TempDir()
	p, err := platform.Up(context.Background(), platform.Config{DataDir: data, HTTPAddr: "127.0.0.1:0",
		Runtime: platform.RuntimeProcess, KernelPath: prog, HeartbeatInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	body, _ := os.ReadFile(prog)
	if resp, b := httpDo(t, "POST", p.URL+"/system/functions?name=fn&kind=serve&deadline=10s&target=99", body); resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, b)
	}
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, b := httpDo(t, "POST", p.URL+"/function/fn", nil)
		if resp.StatusCode == 200 {
			break
		}
		if resp.StatusCode != 503 || time.Now().After(end) { // 503 until the agent has registered
			t.Fatalf("invoke: %d %s", resp.StatusCode, b)
		}
	}
	// The instance that served stays warm (keep-alive); the agent's next
	// heartbeat tells the scheduler.
	var rep gateway.SLAReport
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, b := httpDo(t, "GET", p.URL+"/system/sla/fn", nil)
		if resp.StatusCode != 200 || json.Unmarshal(b, &rep) != nil {
			t.Fatalf("GET /system/sla/fn: %d %s", resp.StatusCode, b)
		}
		if rep.Hour.Invocations == 1 && rep.WarmInstances != nil && *rep.WarmInstances >= 1 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("after 15 s: %s", b)
		}
	}
	if rep.Hour.Good != 1 || rep.Hour.Boots+rep.Hour.Restores != 1 || rep.ColdStartShare != 1 {
		t.Fatalf("report %+v", rep)
	}
	// The ledger is the data directory's sla.db and outlives the process.
	p.Close()
	if _, err := os.Stat(filepath.Join(data, "sla.db")); err != nil {
		t.Fatal(err)
	}
	p2, err := platform.Up(context.Background(), platform.Config{DataDir: data, HTTPAddr: "127.0.0.1:0", NoAgent: true, KernelPath: prog})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	resp, b := httpDo(t, "GET", p2.URL+"/system/sla/fn", nil)
	var again gateway.SLAReport
	if resp.StatusCode != 200 || json.Unmarshal(b, &again) != nil || again.Hour != rep.Hour || again.WarmInstances == nil || *again.WarmInstances != 0 {
		t.Fatalf("after a restart without an agent: %d %s", resp.StatusCode, b)
	}
}
