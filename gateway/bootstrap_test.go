package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/gateway"
)

// browserish sends a request as a web page's could be sent: with the
// Host, Origin, Sec-Fetch-Site and Content-Type given ("" sends none),
// over a real TCP connection to the gateway on 127.0.0.1.
func browserish(t *testing.T, method, url, host, origin, site, ctype, auth string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range map[string]string{"Origin": origin, "Sec-Fetch-Site": site, "Content-Type": ctype, "Authorization": auth} {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	return roundTrip(t, req)
}

// Finding 5 of issue 13: while no API key existed, a deploy with a foreign
// Host and Origin and Content-Type text/plain — what a web page the
// operator visits can send (CSRF), or read the answer of after pointing
// its own name at 127.0.0.1 (DNS rebinding) — was accepted. Now each of
// the three is refused with a sentence saying why, nothing is deployed,
// and the same requests with a key, and a plain `kiln deploy` from the CLI
// without one, still work.
func TestBootstrapRefusesWebPages(t *testing.T) {
	prog := staticELF(t)
	e := start(t, gateway.Config{Keys: openKeys(t)})
	port := e.url[strings.LastIndex(e.url, ":")+1:]
	deployURL := e.url + "/system/functions?name=planted&kind=exec"

	// The attack as found: all three at once.
	resp, b := browserish(t, "POST", deployURL, "rebind.example:"+port, "http://rebind.example:"+port, "", "text/plain", "", prog)
	if resp.StatusCode != 403 || !strings.Contains(decodeError(t, b).Error, "DNS rebinding") {
		t.Fatalf("the attack of the finding: %d %s; want 403 naming DNS rebinding", resp.StatusCode, b)
	}
	for _, tc := range []struct {
		name, host, origin, site, ctype string
		code                            int
		says                            string
	}{
		{"foreign Host", "rebind.example:" + port, "", "", "application/octet-stream", 403, "DNS rebinding"},
		{"cross-site Origin", "", "https://evil.example", "", "application/octet-stream", 403, "cross-site request forgery"},
		{"same-origin page", "", "http://127.0.0.1:" + port, "", "application/octet-stream", 403, "comes from a web page"},
		{"null Origin", "", "null", "", "application/octet-stream", 403, "comes from a web page"},
		{"Sec-Fetch-Site", "", "", "cross-site", "application/octet-stream", 403, "cross-site request forgery"},
		{"text/plain", "", "", "", "text/plain", 415, "send application/octet-stream"},
		{"form", "", "", "", "application/x-www-form-urlencoded", 415, "without the browser asking first"},
	} {
		resp, b := browserish(t, "POST", deployURL, tc.host, tc.origin, tc.site, tc.ctype, "", prog)
		if resp.StatusCode != tc.code || !strings.Contains(decodeError(t, b).Error, tc.says) {
			t.Errorf("%s: %d %s; want %d saying %q", tc.name, resp.StatusCode, b, tc.code, tc.says)
		}
	}
	// A key cannot be minted by a page either, in any body type it may send.
	for _, ctype := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"} {
		if resp, b := browserish(t, "POST", e.url+"/system/keys", "", "", "", ctype, "", []byte(`{"name":"page"}`)); resp.StatusCode != 415 {
			t.Errorf("POST /system/keys as %s: %d %s; want 415", ctype, resp.StatusCode, b)
		}
	}
	if resp, b := browserish(t, "GET", e.url+"/system/functions", "rebind.example:"+port, "", "", "", "", nil); resp.StatusCode != 403 {
		t.Errorf("a rebinding page reading the function list: %d %s; want 403", resp.StatusCode, b)
	}
	if _, err := e.reg.GetFunction(context.Background(), "planted", ""); err == nil {
		t.Fatal("a refused deploy was stored")
	}

	// Local names still work, and a typed URL is no page's request.
	for _, host := range []string{"localhost:" + port, "127.0.0.1:" + port, "[::1]:" + port} {
		if resp, b := browserish(t, "GET", e.url+"/system/functions", host, "", "none", "", "", nil); resp.StatusCode != 200 {
			t.Errorf("GET with Host %s: %d %s", host, resp.StatusCode, b)
		}
	}

	// `kiln deploy` from the CLI on this machine, no key.
	t.Setenv("KILN_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	t.Setenv("KILN_API_KEY", "")
	t.Setenv("KILN_SERVER", "")
	bin := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(bin, prog, 0o755); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := cli.Main(context.Background(), []string{"--server", e.url, "deploy", "viacli", "--binary", bin, "--kind", "exec"},
		nil, &out, &errOut); code != 0 {
		t.Fatalf("kiln deploy from the CLI without a key: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if _, err := e.reg.GetFunction(context.Background(), "viacli", ""); err != nil {
		t.Fatalf("the CLI's deploy is not in the registry: %v", err)
	}

	// With a key, nothing of the gate applies: a page cannot attach one.
	admin := "Bearer " + createKey(t, e, "", "admin")
	resp, b = browserish(t, "POST", deployURL, "gateway.example:"+port, "https://console.example", "cross-site", "text/plain", admin, prog)
	var d gateway.Deployed
	if resp.StatusCode != 201 || json.Unmarshal(b, &d) != nil || d.Name != "planted" {
		t.Fatalf("deploy with a key from elsewhere: %d %s", resp.StatusCode, b)
	}
	// And without a key a page now gets the 401 every caller gets.
	if resp, b := browserish(t, "POST", deployURL, "", "https://evil.example", "", "text/plain", "", prog); resp.StatusCode != 401 {
		t.Fatalf("a page once a key exists: %d %s; want 401", resp.StatusCode, b)
	}
}

// A private function is open to local callers while no key exists, so the
// gate guards it too; a public one is open to everyone, pages included.
func TestBootstrapGuardsPrivateFunctions(t *testing.T) {
	e := start(t, gateway.Config{Keys: openKeys(t)})
	for _, q := range []string{"name=secret&kind=exec&private=true", "name=open&kind=exec"} {
		if resp, b := deploy(t, e, q, staticELF(t)); resp.StatusCode != 201 {
			t.Fatalf("deploy %s: %d %s", q, resp.StatusCode, b)
		}
	}
	resp, b := browserish(t, "POST", e.url+"/function/secret", "", "https://evil.example", "", "text/plain", "", []byte("x"))
	if resp.StatusCode != 403 || !strings.Contains(decodeError(t, b).Error, "cross-site request forgery") {
		t.Fatalf("a page calling a private function: %d %s; want 403", resp.StatusCode, b)
	}
	// Past the gate these find no node (the stack has none): 503, not 403.
	if resp, b := browserish(t, "POST", e.url+"/function/secret", "", "", "", "text/plain", "", []byte("x")); resp.StatusCode != 503 {
		t.Fatalf("a local caller of a private function: %d %s; want it past the gate (503, no node)", resp.StatusCode, b)
	}
	if resp, b := browserish(t, "POST", e.url+"/function/open", "", "https://evil.example", "cross-site", "text/plain", "", []byte("x")); resp.StatusCode != 503 {
		t.Fatalf("a page calling a public function: %d %s; want it past the gate (503, no node)", resp.StatusCode, b)
	}
}
