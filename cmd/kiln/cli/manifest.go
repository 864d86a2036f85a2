package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kilnfaas/kiln/gateway"
)

// ManifestFile is the function's manifest in its source directory: the
// deploy settings that belong with the code, so `kiln deploy` alone
// deploys it as its author meant.
const ManifestFile = "kiln.yaml"

// manifestKeys maps each key a manifest may hold to its field of
// gateway.DeployParams: the keys are that struct's JSON tags, read by
// reflection, so a setting the gateway learns is a manifest key at once.
func manifestKeys() map[string][]int {
	keys := map[string][]int{}
	var walk func(t reflect.Type, index []int)
	walk = func(t reflect.Type, index []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			idx := append(append([]int(nil), index...), i)
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				walk(f.Type, idx)
				continue
			}
			tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if tag != "" && tag != "-" {
				keys[tag] = idx
			}
		}
	}
	walk(reflect.TypeFor[gateway.DeployParams](), nil)
	return keys
}

// readManifest reads dir/kiln.yaml into deploy parameters; found is false
// when there is none. Values are taken as written (64M, 2s, 99.9, true),
// and the gateway checks them as it checks flags. An unknown key, a
// duplicate or a value of the wrong shape is an error naming the file,
// the line and the key.
func readManifest(dir string) (p gateway.DeployParams, path string, found bool, err error) {
	path = filepath.Join(dir, ManifestFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return p, path, false, nil
	}
	if err != nil {
		return p, path, false, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return p, path, true, fmt.Errorf("%s: %v", path, err)
	}
	if len(doc.Content) == 0 { // an empty file, or comments only
		return p, path, true, nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return p, path, true, fmt.Errorf("%s:%d: the manifest must be a mapping of settings (name: hello, memory: 64M, ...)", path, m.Line)
	}
	keys := manifestKeys()
	v := reflect.ValueOf(&p).Elem()
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, val := m.Content[i], m.Content[i+1]
		idx, ok := keys[k.Value]
		if !ok {
			return p, path, true, fmt.Errorf("%s:%d: unknown key %q%s; the keys are %s", path, k.Line, k.Value, suggestKey(k.Value, keys), strings.Join(sortedKeys(keys), ", "))
		}
		if seen[k.Value] {
			return p, path, true, fmt.Errorf("%s:%d: key %q given twice", path, k.Line, k.Value)
		}
		seen[k.Value] = true
		if val.Tag == "!!null" {
			continue
		}
		f := v.FieldByIndex(idx)
		switch f.Kind() {
		case reflect.String:
			if val.Kind != yaml.ScalarNode {
				return p, path, true, fmt.Errorf("%s:%d: %s takes one value, e.g. %s: %s", path, val.Line, k.Value, k.Value, exampleValue(k.Value))
			}
			f.SetString(val.Value)
		case reflect.Slice:
			list, err := manifestList(k.Value, val)
			if err != nil {
				return p, path, true, fmt.Errorf("%s:%d: %v", path, val.Line, err)
			}
			f.Set(reflect.ValueOf(list))
		}
	}
	return p, path, true, nil
}

// manifestList reads env (a mapping KEY: VALUE, or a list of KEY=VALUE)
// and args (a list).
func manifestList(key string, n *yaml.Node) ([]string, error) {
	var out []string
	switch {
	case n.Kind == yaml.SequenceNode:
		for _, e := range n.Content {
			if e.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("%s: each entry must be a plain value", key)
			}
			out = append(out, e.Value)
		}
	case n.Kind == yaml.MappingNode && key == "env":
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if v.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("env: %s must have a plain value", k.Value)
			}
			val := v.Value
			if v.Tag == "!!null" {
				val = ""
			}
			out = append(out, k.Value+"="+val)
		}
	case key == "env":
		return nil, errors.New("env: give a mapping (LANG: C) or a list (- LANG=C)")
	default:
		return nil, fmt.Errorf("%s: give a list, e.g. %s: [--verbose]", key, key)
	}
	return out, nil
}

func sortedKeys(keys map[string][]int) []string {
	ks := make([]string, 0, len(keys))
	for k := range keys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// suggestKey names the known key an unknown one was probably meant to be
// (a dash for an underscore, a flag's name, a typo of one or two letters).
func suggestKey(bad string, keys map[string][]int) string {
	if alias, ok := map[string]string{"mem": "memory", "arg": "args", "async-retries": "async_retries"}[bad]; ok {
		return fmt.Sprintf(" (did you mean %s?)", alias)
	}
	norm := strings.ReplaceAll(strings.ToLower(bad), "-", "_")
	if _, ok := keys[norm]; ok {
		return fmt.Sprintf(" (did you mean %s?)", norm)
	}
	best, bestD := "", 3
	for k := range keys {
		if d := editDistance(norm, k); d < bestD || (d == bestD && k < best) {
			best, bestD = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	return ""
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func exampleValue(key string) string {
	if e, ok := map[string]string{"memory": "64M", "timeout": "5s", "kind": "serve", "rate": "10/s", "deadline": "50ms", "target": "99.9", "private": "true", "fresh": "true", "keep_alive": "30s", "max_body": "1M"}[key]; ok {
		return e
	}
	return "1"
}

// overlay returns the query of a deploy: the manifest's settings, each
// replaced by the flag's where a flag was given. Env entries merge by key
// (a flag's KEY=VALUE replaces the file's KEY), since a flag usually adds
// or changes one variable rather than meaning to drop the rest.
func overlay(file, flags gateway.DeployParams) url.Values {
	v := file.Values()
	fv := flags.Values()
	for k, vs := range fv {
		switch k {
		case "name":
			if flags.Name != "" {
				v[k] = vs
			}
		case "env":
			v[k] = mergeEnv(v[k], vs)
		default:
			v[k] = vs
		}
	}
	return v
}

func mergeEnv(base, over []string) []string {
	idx := map[string]int{}
	out := append([]string(nil), base...)
	for i, e := range out {
		k, _, _ := strings.Cut(e, "=")
		idx[k] = i
	}
	for _, e := range over {
		k, _, _ := strings.Cut(e, "=")
		if i, ok := idx[k]; ok {
			out[i] = e
			continue
		}
		idx[k] = len(out)
		out = append(out, e)
	}
	return out
}

// manifestTemplate is the kiln.yaml `kiln new` writes: the common settings
// set, the rest commented out with what they do.
const manifestTemplate = `# NAME's deploy settings: 'kiln deploy' in this directory (or
# 'kiln deploy NAME DIR') reads them; a flag given to kiln deploy wins over
# the same setting here. Unknown keys are an error.
name: NAME
kind: serve          # serve: the Kiln wire protocol, many calls per boot; exec: stdin to stdout, one run per call
memory: 64M          # guest memory
timeout: 30s         # per invocation

# env:               # the function's environment
#   LANG: C
# args: [--verbose]  # arguments after argv[0]

# Who may call it and how much (per gateway):
# private: true      # callers need an API key
# max_concurrency: 10
# rate: 100/s        # token bucket: 10, 10/s, 600/m
# burst: 20
# max_body: 1M       # largest request body, up to 64M

# Warm instances (per node):
# min_warm: 1        # kept booted and idle
# max_instances: 8   # at most; default: as many as memory holds
# keep_alive: 60s    # how long an idle instance above min_warm lives
# fresh: true        # a snapshot restore per call, no state between calls

# SLA:
# deadline: 50ms     # the latency each call should meet
# target: 99.9       # percent of calls within the deadline

# async_retries: 3   # retries of a failed async invocation, 0 to 20
`
