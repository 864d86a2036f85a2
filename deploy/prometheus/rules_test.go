// Package prometheus holds Kiln's Prometheus configuration: prometheus.yml
// (what docker-compose runs), the SLA recording and alerting rules
// (kiln-sla.rules.yml) and their promtool unit tests (kiln-sla.test.yml).
// The tests here run promtool, from Debian's prometheus package, on them.
package prometheus

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// promtool finds promtool, skipping loudly when it is missing unless
// KILN_REQUIRE_PROMETHEUS=1 (as in CI) makes that a failure.
func promtool(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool not found in PATH: the Prometheus rules are NOT checked (apt-get install -y prometheus)"
		if os.Getenv("KILN_REQUIRE_PROMETHEUS") == "1" {
			t.Fatal(msg + "; KILN_REQUIRE_PROMETHEUS=1 makes this a failure")
		}
		t.Skip("SKIPPING: " + msg)
	}
	return bin
}

func run(t *testing.T, bin string, args ...string) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
	t.Logf("%s %s:\n%s", bin, strings.Join(args, " "), out)
}

func TestCheckRules(t *testing.T) {
	run(t, promtool(t), "check", "rules", "kiln-sla.rules.yml")
}

func TestCheckConfig(t *testing.T) {
	// --syntax-only: the scrape target, kiln:8080, exists only in compose.
	run(t, promtool(t), "check", "config", "--syntax-only", "prometheus.yml")
}

// TestRuleUnitTests runs kiln-sla.test.yml: a fast burn fires every alert,
// too little traffic fires none, a slow burn only the 3-day one, and a
// burn that stops clears the page.
func TestRuleUnitTests(t *testing.T) {
	run(t, promtool(t), "test", "rules", "kiln-sla.test.yml")
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record string            `yaml:"record"`
			Alert  string            `yaml:"alert"`
			Expr   string            `yaml:"expr"`
			Labels map[string]string `yaml:"labels"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// TestRulesCoverEveryWindow holds the rules to what docs/METRICS.md
// promises, without promtool: the three series of each SLI window, and the
// four burn-rate alerts with their factors and windows, each guarded by
// the minimum traffic.
func TestRulesCoverEveryWindow(t *testing.T) {
	raw, err := os.ReadFile("kiln-sla.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	records := map[string]string{}
	alerts := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				records[r.Record] = r.Expr
			} else {
				alerts[r.Alert] = r.Expr
			}
		}
	}
	for _, w := range []string{"5m", "30m", "1h", "2h", "6h", "1d", "3d"} {
		for _, rec := range []string{"function:kiln_sla_invocations:increase", "function:kiln_sla_sli:ratio_rate", "function:kiln_sla_burn:ratio_rate"} {
			expr, ok := records[rec+w]
			if !ok {
				t.Errorf("no recording rule %s%s", rec, w)
				continue
			}
			if !strings.HasPrefix(rec, "function:kiln_sla_burn") && !strings.Contains(expr, "["+w+"]") {
				t.Errorf("%s%s does not look at a %s window: %s", rec, w, w, expr)
			}
		}
	}
	for _, a := range []struct{ long, short, factor string }{{"1h", "5m", "14.4"}, {"6h", "30m", "6"}, {"1d", "2h", "3"}, {"3d", "6h", "1"}} {
		expr, ok := alerts["KilnSLABurnRate"+a.long]
		if !ok {
			t.Errorf("no alert KilnSLABurnRate%s", a.long)
			continue
		}
		for _, want := range []string{
			`function:kiln_sla_burn:ratio_rate` + a.long + ` > ` + a.factor + `\b`,
			`function:kiln_sla_burn:ratio_rate` + a.short + ` > ` + a.factor + `\b`,
			`function:kiln_sla_invocations:increase` + a.short + ` >= 10\b`,
		} {
			if !regexp.MustCompile(want).MatchString(expr) {
				t.Errorf("KilnSLABurnRate%s lacks %s: %s", a.long, want, expr)
			}
		}
	}
}
