package deploy

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/kilnfaas/kiln/store/apikeys"
)

// intOrString is a Kubernetes port reference: a number or a port's name.
type intOrString string

func (v *intOrString) UnmarshalYAML(n *yaml.Node) error {
	*v = intOrString(n.Value)
	return nil
}

type k8sObject struct {
	file       string
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		Selector yaml.Node `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		Ports []struct {
			Name       string      `yaml:"name"`
			Port       int         `yaml:"port"`
			TargetPort intOrString `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

type podSpec struct {
	Containers []container `yaml:"containers"`
	Volumes    []struct {
		Name     string `yaml:"name"`
		HostPath *struct {
			Path string `yaml:"path"`
			Type string `yaml:"type"`
		} `yaml:"hostPath"`
		Secret *struct {
			SecretName  string `yaml:"secretName"`
			DefaultMode *int   `yaml:"defaultMode"`
		} `yaml:"secret"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	Env []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
	LivenessProbe   *probe `yaml:"livenessProbe"`
	ReadinessProbe  *probe `yaml:"readinessProbe"`
	SecurityContext *struct {
		Privileged bool `yaml:"privileged"`
	} `yaml:"securityContext"`
	Resources struct {
		Limits map[string]string `yaml:"limits"`
	} `yaml:"resources"`
}

type probe struct {
	HTTPGet *struct {
		Path string      `yaml:"path"`
		Port intOrString `yaml:"port"`
	} `yaml:"httpGet"`
}

// loadK8s parses every manifest of deploy/k8s, each file as several
// documents, and checks kustomization.yaml lists exactly those files.
func loadK8s(t *testing.T) []*k8sObject {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join("k8s", "*.yaml"))
	var objs []*k8sObject
	var resources, images []string
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "kustomization.yaml" {
			var k struct {
				Resources []string `yaml:"resources"`
				Images    []struct {
					Name string `yaml:"name"`
				} `yaml:"images"`
			}
			if err := yaml.Unmarshal(raw, &k); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			resources = k.Resources
			for _, im := range k.Images {
				images = append(images, im.Name)
			}
			continue
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		for i := 1; ; i++ {
			o := &k8sObject{file: f}
			if err := dec.Decode(o); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s, document %d: %v", f, i, err)
			}
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Errorf("%s, document %d: needs apiVersion, kind and metadata.name (has %q %q %q)", f, i, o.APIVersion, o.Kind, o.Metadata.Name)
			}
			objs = append(objs, o)
		}
	}
	var manifests []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			manifests = append(manifests, b)
		}
	}
	slices.Sort(resources)
	if !slices.Equal(resources, manifests) {
		t.Errorf("k8s/kustomization.yaml lists %v; the directory has %v", resources, manifests)
	}
	if len(objs) == 0 {
		t.Fatal("no manifests in deploy/k8s")
	}
	// An image override that names no container's image would leave the
	// manifests on an image nobody pushed.
	for _, name := range images {
		used := false
		for _, o := range objs {
			for _, c := range o.Spec.Template.Spec.Containers {
				if repo, _, _ := strings.Cut(c.Image, ":"); repo == name {
					used = true
				}
			}
		}
		if !used {
			t.Errorf("k8s/kustomization.yaml overrides image %s, which no container uses", name)
		}
	}
	return objs
}

func find(objs []*k8sObject, kind, name string) *k8sObject {
	for _, o := range objs {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	return nil
}

func isWorkload(o *k8sObject) bool {
	return o.Kind == "Deployment" || o.Kind == "DaemonSet" || o.Kind == "StatefulSet"
}

// subset reports whether every label of sel is in labels.
func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

// containerPort resolves a port reference (number or name) in c.
func containerPort(c container, ref intOrString) (int, string, bool) {
	for _, p := range c.Ports {
		if string(ref) == p.Name || string(ref) == strconv.Itoa(p.ContainerPort) {
			return p.ContainerPort, p.Name, true
		}
	}
	return 0, "", false
}

func TestKubernetesManifests(t *testing.T) {
	objs := loadK8s(t)
	built := builtHere(t, loadCompose(t))
	builtRepos := map[string]bool{}
	for img := range built {
		repo, _, _ := strings.Cut(img, ":")
		builtRepos[repo] = true
	}

	tlsSecrets := operatorSecrets(t)
	roles := map[string]*k8sObject{}   // kiln role → its workload
	listens := map[string][]listener{} // workload → what its kiln container listens on
	for _, o := range objs {
		if !isWorkload(o) {
			continue
		}
		var sel struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		}
		if err := o.Spec.Selector.Decode(&sel); err != nil || !subset(sel.MatchLabels, o.Spec.Template.Metadata.Labels) {
			t.Errorf("%s %s: selector %v does not select its own pods' labels %v (%v)", o.Kind, o.Metadata.Name, sel.MatchLabels, o.Spec.Template.Metadata.Labels, err)
		}
		pod := o.Spec.Template.Spec
		volumes := map[string]int{}
		for i, v := range pod.Volumes {
			volumes[v.Name] = i
			if v.Secret != nil && tlsSecrets[v.Secret.SecretName] == nil && find(objs, "Secret", v.Secret.SecretName) == nil {
				t.Errorf("%s %s: volume %s: no Secret %s", o.Kind, o.Metadata.Name, v.Name, v.Secret.SecretName)
			}
			if v.ConfigMap != nil && find(objs, "ConfigMap", v.ConfigMap.Name) == nil {
				t.Errorf("%s %s: volume %s: no ConfigMap %s", o.Kind, o.Metadata.Name, v.Name, v.ConfigMap.Name)
			}
		}
		for _, c := range pod.Containers {
			where := o.Kind + " " + o.Metadata.Name + " container " + c.Name
			repo, _, _ := strings.Cut(c.Image, ":")
			if !builtRepos[repo] && !pinned.MatchString(c.Image) {
				t.Errorf("%s: image %q is neither built here nor a published image pinned to a version tag", where, c.Image)
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil && find(objs, "ConfigMap", ef.ConfigMapRef.Name) == nil {
					t.Errorf("%s: envFrom names no ConfigMap %s", where, ef.ConfigMapRef.Name)
				}
				if ef.SecretRef != nil && find(objs, "Secret", ef.SecretRef.Name) == nil {
					t.Errorf("%s: envFrom names no Secret %s", where, ef.SecretRef.Name)
				}
			}
			env := map[string]bool{}
			for _, e := range c.Env {
				env[e.Name] = true
			}
			for _, m := range regexp.MustCompile(`\$\(([A-Z_]+)\)`).FindAllStringSubmatch(strings.Join(c.Args, " "), -1) {
				if !env[m[1]] {
					t.Errorf("%s: args use $(%s), which its env does not define", where, m[1])
				}
			}
			mounts := map[string]string{}
			for _, vm := range c.VolumeMounts {
				if _, ok := volumes[vm.Name]; !ok {
					t.Errorf("%s: mounts volume %s, which the pod does not have", where, vm.Name)
				}
				mounts[vm.MountPath] = vm.Name
			}
			if !builtRepos[repo] {
				continue
			}
			if len(c.Command) != 0 {
				t.Errorf("%s: command %v replaces the image's kiln entrypoint; give args", where, c.Command)
			}
			role, flags, ls := kilnListeners(t, where, c.Args)
			roles[role] = o
			listens[o.Metadata.Name] = ls
			// Container ports are exactly what kiln listens on, for others.
			var want, have []int
			for _, l := range ls {
				want = append(want, l.port)
				if !l.public {
					t.Errorf("%s: listens on loopback port %d, which no other pod can reach", where, l.port)
				}
			}
			for _, p := range c.Ports {
				have = append(have, p.ContainerPort)
			}
			slices.Sort(want)
			slices.Sort(have)
			if !slices.Equal(want, have) {
				t.Errorf("%s: container ports %v, but its args listen on %v", where, have, want)
			}
			for _, pr := range []struct {
				name, path string
				p          *probe
			}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
				if pr.p == nil || pr.p.HTTPGet == nil {
					t.Errorf("%s: no HTTP %s probe", where, pr.name)
					continue
				}
				port, _, ok := containerPort(c, pr.p.HTTPGet.Port)
				if pr.p.HTTPGet.Path != pr.path || !ok || !slices.ContainsFunc(ls, func(l listener) bool { return l.port == port && l.kind == "kiln-http" }) {
					t.Errorf("%s: %s probe GET %s on port %s; want %s on its HTTP port", where, pr.name, pr.p.HTTPGet.Path, pr.p.HTTPGet.Port, pr.path)
				}
			}
			if f := flags["api-keys-file"]; f != "" {
				checkMountedKeys(t, objs, pod, mounts, where, f)
			}
			checkK8sTLS(t, tlsSecrets, pod, role, flags, mounts, where)
			if role == "agent" {
				checkKVM(t, pod, c, mounts, where)
				if flags["advertise"] == "" {
					t.Errorf("%s: an agent listening on 0.0.0.0 needs --advertise", where)
				}
			}
		}
	}
	for _, r := range []string{"gateway", "scheduler", "agent"} {
		if roles[r] == nil {
			t.Errorf("no workload runs kiln %s", r)
		}
	}
	if a := roles["agent"]; a != nil && a.Kind != "DaemonSet" {
		t.Errorf("the agent runs as a %s; want a DaemonSet, one per KVM node", a.Kind)
	}

	// Services select some workload's pods and target its ports.
	services := map[string]*k8sObject{}
	for _, o := range objs {
		if o.Kind != "Service" {
			continue
		}
		services[o.Metadata.Name] = o
		var sel map[string]string
		if err := o.Spec.Selector.Decode(&sel); err != nil {
			t.Errorf("Service %s: selector: %v", o.Metadata.Name, err)
		}
		var target *k8sObject
		for _, w := range objs {
			if isWorkload(w) && subset(sel, w.Spec.Template.Metadata.Labels) {
				target = w
			}
		}
		if target == nil {
			t.Errorf("Service %s selects %v, which no workload's pods carry", o.Metadata.Name, sel)
			continue
		}
		for _, p := range o.Spec.Ports {
			found := false
			for _, c := range target.Spec.Template.Spec.Containers {
				if _, _, ok := containerPort(c, p.TargetPort); ok {
					found = true
				}
			}
			if !found {
				t.Errorf("Service %s port %d targets %q, not a port of %s %s", o.Metadata.Name, p.Port, p.TargetPort, target.Kind, target.Metadata.Name)
			}
		}
	}

	// The configuration: the scheduler address is its Service's gRPC
	// port; Redis and NATS URLs have the schemes the roles accept.
	cm := find(objs, "ConfigMap", "kiln-config")
	if cm == nil {
		t.Fatal("no ConfigMap kiln-config")
	}
	for _, k := range slices.Sorted(maps.Keys(cm.Data)) {
		if !strings.HasPrefix(k, "KILN_") && !strings.HasPrefix(k, "OTEL_") {
			t.Errorf("ConfigMap kiln-config: %s is not a variable Kiln reads", k)
		}
	}
	for k, scheme := range map[string]string{"KILN_REDIS_URL": "redis", "KILN_NATS_URL": "nats"} {
		if u, err := url.Parse(cm.Data[k]); err != nil || u.Scheme != scheme || u.Port() == "" {
			t.Errorf("ConfigMap kiln-config: %s=%q: want %s://HOST:PORT", k, cm.Data[k], scheme)
		}
	}
	host, port, err := net.SplitHostPort(cm.Data["KILN_SCHEDULER"])
	svc := services[strings.Split(host, ".")[0]]
	if err != nil || svc == nil {
		t.Fatalf("ConfigMap kiln-config: KILN_SCHEDULER=%q names no Service (%v)", cm.Data["KILN_SCHEDULER"], err)
	}
	sched := roles["scheduler"]
	ok := false
	for _, p := range svc.Spec.Ports {
		if strconv.Itoa(p.Port) != port || sched == nil {
			continue
		}
		for _, c := range sched.Spec.Template.Spec.Containers {
			if n, _, found := containerPort(c, p.TargetPort); found && slices.ContainsFunc(listens[sched.Metadata.Name], func(l listener) bool { return l.port == n && l.kind == "grpc" }) {
				ok = true
			}
		}
	}
	if !ok {
		t.Errorf("KILN_SCHEDULER=%s does not reach the scheduler's gRPC port through Service %s", cm.Data["KILN_SCHEDULER"], svc.Metadata.Name)
	}
}

// checkMountedKeys: the keys file a gateway is given is a key of a Secret
// mounted at its directory, and parses as a keys file.
func checkMountedKeys(t *testing.T, objs []*k8sObject, pod podSpec, mounts map[string]string, where, path string) {
	t.Helper()
	dir, key := filepath.Dir(path), filepath.Base(path)
	vol, ok := mounts[dir]
	if !ok {
		t.Errorf("%s: --api-keys-file %s: nothing is mounted at %s", where, path, dir)
		return
	}
	for _, v := range pod.Volumes {
		if v.Name != vol || v.Secret == nil {
			continue
		}
		s := find(objs, "Secret", v.Secret.SecretName)
		if s == nil {
			return // reported with the volumes
		}
		content, ok := s.StringData[key]
		if !ok {
			t.Errorf("%s: Secret %s has no key %s for --api-keys-file %s", where, s.Metadata.Name, key, path)
			return
		}
		f := filepath.Join(t.TempDir(), key)
		os.WriteFile(f, []byte(content), 0o600)
		kf, err := apikeys.OpenFile(f)
		if err != nil {
			t.Errorf("%s: Secret %s key %s is not a keys file: %v", where, s.Metadata.Name, key, err)
			return
		}
		kf.Close()
		return
	}
	t.Errorf("%s: --api-keys-file %s: volume %s is not a Secret", where, path, vol)
}

// checkKVM: the agent's container sees the host's /dev/kvm, and may open
// it (privileged, or a KVM device plugin's resource).
func checkKVM(t *testing.T, pod podSpec, c container, mounts map[string]string, where string) {
	t.Helper()
	if _, ok := c.Resources.Limits["devices.kubevirt.io/kvm"]; ok {
		return
	}
	vol, ok := mounts["/dev/kvm"]
	if !ok {
		t.Errorf("%s: /dev/kvm is not mounted", where)
		return
	}
	for _, v := range pod.Volumes {
		if v.Name == vol && (v.HostPath == nil || v.HostPath.Path != "/dev/kvm" || v.HostPath.Type != "CharDevice") {
			t.Errorf("%s: volume %s is not the host's /dev/kvm (hostPath, type CharDevice)", where, vol)
		}
	}
	if c.SecurityContext == nil || !c.SecurityContext.Privileged {
		t.Errorf("%s: mounts /dev/kvm but is not privileged, so it cannot open it", where)
	}
}
