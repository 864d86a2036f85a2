// Package deploy holds deployment files (docker-compose.yml at the root,
// Prometheus configuration here). There is no Docker engine on the project's
// machines, so this test checks the compose file statically: every service
// can start, every file it mounts exists, and Prometheus scrapes a service
// that exists on the port it listens on.
package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

type compose struct {
	Services map[string]struct {
		Image   string   `yaml:"image"`
		Build   any      `yaml:"build"`
		Command []string `yaml:"command"`
		Ports   []string `yaml:"ports"`
		Volumes []string `yaml:"volumes"`
		Devices []string `yaml:"devices"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func TestComposeFile(t *testing.T) {
	root := ".."
	raw, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	kiln, ok := c.Services["kiln"]
	if !ok {
		t.Fatal("docker-compose.yml: no kiln service")
	}
	if kiln.Build == nil {
		t.Fatal("kiln service: no build")
	}
	if _, err := os.Stat(filepath.Join(root, "Dockerfile")); err != nil {
		t.Fatalf("kiln service builds from the Dockerfile: %v", err)
	}
	if len(kiln.Command) == 0 || kiln.Command[0] != "up" || !strings.Contains(strings.Join(kiln.Command, " "), "--listen 0.0.0.0:8080") {
		t.Fatalf("kiln service must run `kiln up --listen 0.0.0.0:8080`, has %v", kiln.Command)
	}
	if !contains(kiln.Devices, "/dev/kvm:/dev/kvm") {
		t.Fatalf("kiln service needs /dev/kvm, has devices %v", kiln.Devices)
	}
	for name, s := range c.Services {
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %s: neither image nor build", name)
		}
		for _, v := range s.Volumes {
			src := strings.SplitN(v, ":", 2)[0]
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join(root, src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("service %s uses volume %s, which is not declared", name, src)
			}
		}
	}
	prom, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		ScrapeConfigs []struct {
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(prom, &p); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	if len(p.ScrapeConfigs) == 0 || len(p.ScrapeConfigs[0].StaticConfigs) == 0 || !contains(p.ScrapeConfigs[0].StaticConfigs[0].Targets, "kiln:8080") {
		t.Fatalf("prometheus.yml must scrape kiln:8080 (the kiln service's gateway), has %+v", p)
	}
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
