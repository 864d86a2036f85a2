package deploy

import (
	"bytes"
	"context"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/internal/rolecert"
)

// caLine is one `kiln ca init|issue` of a deployment's script or docs.
type caLine struct {
	sub   string
	flags map[string]string
}

var caLineRE = regexp.MustCompile(`\bkiln ca (init|issue)((?: --[a-z-]+ [^ \n|&;]+)*)`)

// kilnCALines finds the `kiln ca` commands in text and checks that every
// flag they give exists in the real CLI.
func kilnCALines(t *testing.T, where, text string) []caLine {
	t.Helper()
	var out []caLine
	for _, m := range caLineRE.FindAllStringSubmatch(text, -1) {
		l := caLine{sub: m[1], flags: map[string]string{}}
		if m[2] == "" {
			continue // prose naming the command, not running it
		}
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			l.flags[strings.TrimPrefix(f[i], "--")] = f[i+1]
		}
		var help, errb bytes.Buffer
		if code := cli.Main(context.Background(), []string{"ca", l.sub, "--help"}, strings.NewReader(""), &help, &errb); code != 0 {
			t.Fatalf("kiln ca %s --help: %d %s", l.sub, code, errb.String())
		}
		for k := range l.flags {
			if !strings.Contains(help.String(), "--"+k+" ") {
				t.Errorf("%s: `kiln ca %s` has no flag --%s", where, l.sub, k)
			}
		}
		out = append(out, l)
	}
	return out
}

// identity is what an issue line issues.
func (l caLine) identity() rolecert.Identity {
	return rolecert.Identity{Role: l.flags["role"], Node: l.flags["node"]}
}

// namedMounts maps a service's mount points to the named volumes there.
func namedMounts(s composeService) map[string]string {
	out := map[string]string{}
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && !strings.HasPrefix(parts[0], "./") && !strings.HasPrefix(parts[0], "/") {
			out[parts[1]] = parts[0]
		}
	}
	return out
}

// checkComposeTLS: the roles speak mTLS on certificates the pki service
// issues. Every role is given --tls-ca, --tls-cert and --tls-key (never
// --insecure-grpc), read-only from a volume that holds exactly the
// certificate of that role (an agent: of the node it is named), issued
// there by the pki service, which every role waits for; no role mounts
// the CA's key; a role that runs as another user is handed its files.
func checkComposeTLS(t *testing.T, c composeFile, built map[string]string) {
	t.Helper()
	var pkiName string
	var lines []caLine
	for name, s := range c.Services {
		if _, ok := built[s.Image]; !ok || isRole(s, built) {
			continue
		}
		ls := kilnCALines(t, "service "+name, strings.Join(s.Command, "\n"))
		if slices.ContainsFunc(ls, func(l caLine) bool { return l.sub == "init" }) {
			if pkiName != "" {
				t.Errorf("services %s and %s both make a CA", pkiName, name)
			}
			pkiName, lines = name, ls
		}
	}
	if pkiName == "" {
		t.Fatal("no service makes the cluster's CA with `kiln ca init`")
	}
	pki := c.Services[pkiName]
	if pki.Restart != "no" {
		t.Errorf("service %s runs once: restart must be \"no\", not %q", pkiName, pki.Restart)
	}
	script := strings.Join(pki.Command, "\n")
	mounts := namedMounts(pki)
	var caDir string
	issued := map[string]caLine{} // volume → the issue writing there
	for _, l := range lines {
		switch l.sub {
		case "init":
			caDir = l.flags["dir"]
		case "issue":
			if l.flags["dir"] != caDir || caDir == "" {
				t.Errorf("service %s: kiln ca issue --dir %q, but the CA is made in %q", pkiName, l.flags["dir"], caDir)
			}
			vol, ok := mounts[l.flags["out"]]
			if !ok {
				t.Errorf("service %s: kiln ca issue --out %q is not a named volume of the service", pkiName, l.flags["out"])
				continue
			}
			issued[vol] = l
		}
	}
	caVol, ok := mounts[caDir]
	if !ok {
		t.Errorf("service %s: the CA's directory %q is not on a named volume: it would be made anew each run", pkiName, caDir)
	}
	if _, ok := issued[caVol]; ok {
		t.Errorf("service %s: a role's certificate is issued into the CA's volume %s, so the role would hold the CA's key", pkiName, caVol)
	}

	usedBy := map[string]string{}
	for name, s := range c.Services {
		if !isRole(s, built) {
			continue
		}
		role, flags, _ := kilnListeners(t, "service "+name, s.Command)
		where := "service " + name
		if _, ok := flags["insecure-grpc"]; ok {
			t.Errorf("%s: --insecure-grpc: a deployment's roles speak mTLS", where)
		}
		if dep, ok := s.DependsOn[pkiName]; !ok || dep.Condition != "service_completed_successfully" {
			t.Errorf("%s: must wait for %s (condition service_completed_successfully) to have its certificate", where, pkiName)
		}
		sm := namedMounts(s)
		for mp, vol := range sm {
			if vol == caVol {
				t.Errorf("%s mounts the CA's volume %s at %s: it would hold the CA's key", where, vol, mp)
			}
		}
		var vol string
		for _, f := range []string{"tls-ca", "tls-cert", "tls-key"} {
			p := flags[f]
			if p == "" {
				t.Errorf("%s: no --%s", where, f)
				continue
			}
			v, ok := sm[path.Dir(p)]
			if !ok {
				t.Errorf("%s: --%s %s: no named volume is mounted at %s", where, f, p, path.Dir(p))
			} else if vol != "" && v != vol {
				t.Errorf("%s: --tls-* files come from different volumes %s and %s", where, vol, v)
			}
			vol = v
		}
		if vol == "" {
			continue
		}
		if !slices.Contains(s.Volumes, vol+":"+path.Dir(flags["tls-key"])+":ro") {
			t.Errorf("%s: mount the TLS volume %s read-only", where, vol)
		}
		if other, dup := usedBy[vol]; dup {
			t.Errorf("services %s and %s share the TLS volume %s: each role holds its own key only", other, name, vol)
		}
		usedBy[vol] = name
		l, ok := issued[vol]
		if !ok {
			t.Errorf("%s: service %s issues no certificate into volume %s", where, pkiName, vol)
			continue
		}
		id := l.identity()
		if id.Role != role || (role == "agent" && id.Node != flags["name"]) {
			t.Errorf("%s: kiln %s --name %q is given the certificate of %s", where, role, flags["name"], id)
		}
		cert, key := rolecert.CertFiles("", id)
		if path.Base(flags["tls-cert"]) != cert || path.Base(flags["tls-key"]) != key || path.Base(flags["tls-ca"]) != rolecert.CACertFile {
			t.Errorf("%s: --tls-ca %s --tls-cert %s --tls-key %s; kiln ca issue writes %s, %s and %s", where,
				flags["tls-ca"], flags["tls-cert"], flags["tls-key"], rolecert.CACertFile, cert, key)
		}
		if s.User != "" && !strings.HasPrefix(s.User, "0:") && s.User != "0" && s.User != "root" {
			if !regexp.MustCompile(`(?m)^\s*chown -R ` + regexp.QuoteMeta(s.User) + ` .*` + regexp.QuoteMeta(l.flags["out"]) + `\b`).MatchString(script) {
				t.Errorf("%s runs as %s, but service %s does not hand it %s (chown -R %s ...): it could not read its 0600 key",
					where, s.User, pkiName, l.flags["out"], s.User)
			}
		}
	}
}

// shellVar matches a variable of a shell command ("$n", ${n}) or of a
// Kubernetes arg ($(NODE_NAME)): where the docs' loop issues an agent
// certificate per node, the manifest names the node by variable.
var shellVar = regexp.MustCompile(`"?\$(\{[A-Za-z_]+\}|\([A-Z_]+\)|[A-Za-z_]+)"?`)

func canonVars(s string) string { return shellVar.ReplaceAllString(s, "{var}") }

// operatorSecrets reads the TLS Secrets docs/DEPLOY.md tells the operator
// to make: Secret name → the file names (keys) it holds, from its
// `kiln ca issue --out DIR` and `kubectl create secret generic NAME
// --from-file=DIR/` commands.
func operatorSecrets(t *testing.T) map[string]map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "docs", "DEPLOY.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	dirs := map[string]map[string]bool{} // --out DIR → files
	for _, l := range kilnCALines(t, "docs/DEPLOY.md", text) {
		if l.sub != "issue" {
			continue
		}
		out := strings.TrimSuffix(l.flags["out"], "/")
		if out == "" {
			t.Errorf("docs/DEPLOY.md: kiln ca issue %v without --out would put the role's files beside the CA's key", l.flags)
			continue
		}
		cert, key := rolecert.CertFiles("", l.identity())
		if dirs[out] == nil {
			dirs[out] = map[string]bool{rolecert.CACertFile: true}
		}
		dirs[out][canonVars(cert)], dirs[out][canonVars(key)] = true, true
	}
	secrets := map[string]map[string]bool{}
	for _, m := range regexp.MustCompile(`kubectl -n kiln create secret generic (\S+) --from-file=(\S+)/`).FindAllStringSubmatch(text, -1) {
		files, ok := dirs[m[2]]
		if !ok {
			t.Errorf("docs/DEPLOY.md: Secret %s is made from %s/, which no `kiln ca issue --out` writes", m[1], m[2])
		}
		secrets[m[1]] = files
	}
	if len(secrets) == 0 {
		t.Error("docs/DEPLOY.md says how to make no TLS Secret")
	}
	return secrets
}

// checkK8sTLS: a kiln container speaks mTLS on files of a Secret the
// operator makes as docs/DEPLOY.md says, holding that role's certificate
// (an agent: of the node it is named), mounted so that others cannot
// read the key.
func checkK8sTLS(t *testing.T, secrets map[string]map[string]bool, pod podSpec, role string, flags map[string]string,
	mounts map[string]string, where string) {
	t.Helper()
	if _, ok := flags["insecure-grpc"]; ok {
		t.Errorf("%s: --insecure-grpc: a deployment's roles speak mTLS", where)
	}
	id := rolecert.Identity{Role: role}
	if role == "agent" {
		id.Node = flags["name"]
	}
	cert, key := rolecert.CertFiles("", id)
	want := map[string]string{"tls-ca": rolecert.CACertFile, "tls-cert": canonVars(cert), "tls-key": canonVars(key)}
	for f, base := range want {
		p := flags[f]
		if p == "" {
			t.Errorf("%s: no --%s", where, f)
			continue
		}
		if canonVars(path.Base(p)) != base {
			t.Errorf("%s: --%s %s: kiln ca issue names the file of %s %s", where, f, p, id, base)
		}
		vol, ok := mounts[path.Dir(p)]
		if !ok {
			t.Errorf("%s: --%s %s: nothing is mounted at %s", where, f, p, path.Dir(p))
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != vol {
				continue
			}
			if v.Secret == nil {
				t.Errorf("%s: --%s %s: volume %s is not a Secret", where, f, p, vol)
				break
			}
			files, ok := secrets[v.Secret.SecretName]
			if !ok {
				t.Errorf("%s: Secret %s is not one docs/DEPLOY.md makes", where, v.Secret.SecretName)
			} else if !files[base] {
				t.Errorf("%s: Secret %s, as docs/DEPLOY.md makes it, has no %s (has %v)", where, v.Secret.SecretName, base, files)
			}
			if m := v.Secret.DefaultMode; m == nil || *m&0o007 != 0 {
				t.Errorf("%s: Secret volume %s: defaultMode must keep the key from other users (0400 or 0440)", where, vol)
			}
		}
	}
}
