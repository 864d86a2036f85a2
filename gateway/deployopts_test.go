package gateway_test

import (
	"context"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/registry"
)

// Warm-pool and SLA settings are validated with errors that say what is
// accepted, nothing is stored for a rejected deploy, and good ones reach
// the registry and the deploy's answer.
func TestDeployScalingAndSLA(t *testing.T) {
	e := start(t, gateway.Config{})
	prog := staticELF(t)
	for query, want := range map[string]string{
		"name=a&min_warm=-1":                 "bad min_warm",
		"name=a&min_warm=1001":               "bad min_warm",
		"name=a&max_instances=x":             "bad max_instances",
		"name=a&min_warm=3&max_instances=2":  "more than max_instances",
		"name=a&keep_alive=forever":          "bad keep_alive",
		"name=a&keep_alive=25h":              "bad keep_alive",
		"name=a&fresh=perhaps":               "bad fresh",
		"name=a&fresh=true&min_warm=1":       "fresh function keeps no warm",
		"name=a&deadline=50ms":               "both a deadline and a target",
		"name=a&target=99.9":                 "both a deadline and a target",
		"name=a&deadline=0ms&target=99":      "bad deadline",
		"name=a&deadline=50ms&target=100":    "bad target",
		"name=a&deadline=50ms&target=lots":   "bad target",
		"name=a&deadline=soon&target=99.9":   "bad deadline",
		"name=a&deadline=20m&target=99.9":    "bad deadline",
		"name=a&deadline=50ms&target=-3":     "bad target",
		"name=a&max_instances=100001":        "bad max_instances",
		"name=a&keep_alive=-5s":              "bad keep_alive",
		"name=a&min_warm=two&deadline=1s":    "bad min_warm",
		"name=a&deadline=1s&target=99.9%25x": "bad target",
	} {
		resp, b := deploy(t, e, query, prog)
		if resp.StatusCode != 400 || !strings.Contains(decodeError(t, b).Error, want) {
			t.Errorf("%s: %d %s; want 400 with %q", query, resp.StatusCode, b, want)
		}
	}
	if fs, _ := e.reg.ListFunctions(context.Background()); len(fs) != 0 {
		t.Fatalf("rejected deploys stored functions: %+v", fs)
	}
	d := mustDeploy(t, e, "name=ok&kind=serve&min_warm=2&max_instances=8&keep_alive=90s&deadline=50ms&target=99.9%25", prog)
	f, err := e.reg.GetFunction(context.Background(), "ok", "")
	wantScaling := registry.Scaling{MinWarm: 2, MaxInstances: 8, KeepAliveMs: 90000}
	wantSLA := registry.SLA{DeadlineMs: 50, Target: 0.999}
	if err != nil || f.Scaling != wantScaling || d.Scaling != wantScaling || f.SLA != wantSLA || d.SLA != wantSLA {
		t.Fatalf("stored %+v %+v, answered %+v %+v, %v; want %+v %+v", f.Scaling, f.SLA, d.Scaling, d.SLA, err, wantScaling, wantSLA)
	}
}
