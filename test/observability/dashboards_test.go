package observability

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// dashboardDir holds the Grafana dashboards, relative to this package.
const dashboardDir = "../../deploy/grafana/dashboards"

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Title      string `json:"title"`
	Type       string `json:"type"`
	Datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

// query is one panel target: what Grafana would send to Prometheus.
type query struct {
	Dashboard, Panel, RefID, Expr string
}

func (q query) String() string { return q.Dashboard + " / " + q.Panel + " / " + q.RefID }

func loadDashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dashboardDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in %s: %v", dashboardDir, err)
	}
	out := map[string]dashboard{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = d
	}
	return out
}

func queries(ds map[string]dashboard) []query {
	var qs []query
	for _, d := range ds {
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				qs = append(qs, query{Dashboard: d.Title, Panel: p.Title, RefID: tg.RefID, Expr: tg.Expr})
			}
		}
	}
	return qs
}

// grafanaVars are the variables Grafana fills in itself, with the values
// the live test substitutes; $function is the dashboards' own variable.
var grafanaVars = map[string]string{
	"__rate_interval": "1m",
	"__interval":      "15s",
	"__range":         "5m",
}

var varRef = regexp.MustCompile(`\$\{?(\w+)\}?`)

// substitute does what Grafana does to an expression before sending it.
func substitute(expr, function string) string {
	return varRef.ReplaceAllStringFunc(expr, func(m string) string {
		name := varRef.FindStringSubmatch(m)[1]
		if name == "function" {
			return function
		}
		if v, ok := grafanaVars[name]; ok {
			return v
		}
		return m
	})
}

// TestDashboardsWellFormed needs no Prometheus: both dashboards exist and
// are provisioned from files, every panel has a unique id, the provisioned
// datasource and at least one query, and every variable a query uses is
// defined.
func TestDashboardsWellFormed(t *testing.T) {
	ds := loadDashboards(t)
	for _, want := range []string{"kiln-fleet.json", "kiln-sla.json"} {
		if _, ok := ds[want]; !ok {
			t.Fatalf("no dashboard %s in %s", want, dashboardDir)
		}
	}
	uids := map[string]bool{}
	for file, d := range ds {
		if d.UID == "" || uids[d.UID] {
			t.Errorf("%s: uid %q missing or not unique", file, d.UID)
		}
		uids[d.UID] = true
		defined := map[string]bool{}
		for _, v := range d.Templating.List {
			defined[v.Name] = true
		}
		ids := map[int]bool{}
		for _, p := range d.Panels {
			if ids[p.ID] {
				t.Errorf("%s: panel id %d twice", file, p.ID)
			}
			ids[p.ID] = true
			if p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
				t.Errorf("%s / %s: datasource %+v, want the ${datasource} variable", file, p.Title, p.Datasource)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s / %s: no query", file, p.Title)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s / %s / %s: empty query", file, p.Title, tg.RefID)
				}
				for _, m := range varRef.FindAllStringSubmatch(tg.Expr, -1) {
					if _, builtin := grafanaVars[m[1]]; !builtin && !defined[m[1]] {
						t.Errorf("%s / %s: $%s is not defined", file, p.Title, m[1])
					}
				}
			}
		}
	}
	if !strings.Contains(substitute(`x{function="$function"}[$__rate_interval]`, "f"), `x{function="f"}[1m]`) {
		t.Fatal("substitute does not replace variables")
	}
	prov, err := os.ReadFile("../../deploy/grafana/provisioning/datasources/prometheus.yml")
	if err != nil || !strings.Contains(string(prov), "uid: kiln-prometheus") {
		t.Fatalf("the provisioned datasource must have uid kiln-prometheus (the dashboards' default): %v", err)
	}
}
