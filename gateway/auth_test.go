package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kilnfaas/kiln/gateway"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/apikeys"
	"github.com/kilnfaas/kiln/store/registry"
)

func openKeys(t *testing.T) *apikeys.Bolt {
	t.Helper()
	keys, err := apikeys.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keys.Close() })
	return keys
}

// doKey is do with an Authorization header ("" sends none).
func doKey(t *testing.T, auth, method, url, ctype string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	return roundTrip(t, req)
}

// roundTrip sends req and reads the whole answer.
func roundTrip(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func createKey(t *testing.T, e *env, auth, name string) string {
	t.Helper()
	resp, b := doKey(t, auth, "POST", e.url+"/system/keys", "application/json", []byte(`{"name":"`+name+`"}`))
	var ck gateway.CreatedKey
	if resp.StatusCode != 201 || json.Unmarshal(b, &ck) != nil || ck.Name != name || !strings.HasPrefix(ck.Key, apikeys.Prefix) {
		t.Fatalf("create key %s: %d %s", name, resp.StatusCode, b)
	}
	return ck.Key
}

// snapshot is everything a management request could change; admin reads
// what only the HTTP API shows.
func snapshot(t *testing.T, e *env, keys apikeys.Store, admin string) string {
	t.Helper()
	fs, err := e.reg.ListFunctions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keys.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range fs {
		vs, _ := e.reg.Versions(context.Background(), f.Name)
		json.NewEncoder(&b).Encode(vs)
		_, aliases := doKey(t, "Bearer "+admin, "GET", e.url+"/system/functions/"+f.Name+"/aliases", "", nil)
		b.Write(aliases)
	}
	for _, k := range ks {
		b.WriteString(k.Name + "," + k.Hash.String() + "\n")
	}
	return b.String()
}

// Every management route refuses a missing, wrong, revoked or malformed
// key with the same 401, and changes nothing; the admin key passes.
func TestManagementNeedsKey(t *testing.T) {
	keys := openKeys(t)
	e := start(t, gateway.Config{Keys: keys})
	prog := staticELF(t)

	// Bootstrap: no key exists, and the test's peer is loopback.
	if resp, b := deploy(t, e, "name=one", prog); resp.StatusCode != 201 {
		t.Fatalf("deploy while no key exists, from loopback: %d %s", resp.StatusCode, b)
	}
	admin := createKey(t, e, "", "admin")
	if resp, b := deploy(t, e, "name=late", prog); resp.StatusCode != 401 {
		t.Fatalf("deploy without a key once a key exists: %d %s", resp.StatusCode, b)
	}
	revoked := createKey(t, e, "Bearer "+admin, "old")
	if resp, b := doKey(t, "Bearer "+admin, "DELETE", e.url+"/system/keys/old", "", nil); resp.StatusCode != 204 {
		t.Fatalf("revoke old: %d %s", resp.StatusCode, b)
	}
	if resp, b := doKey(t, "Bearer "+admin, "PUT", e.url+"/system/functions/one/aliases/prod", "application/json", []byte(`{"version":1}`)); resp.StatusCode != 200 {
		t.Fatalf("set alias prod: %d %s", resp.StatusCode, b)
	}
	wrong, _, _ := apikeys.Generate()
	before := snapshot(t, e, keys, admin)
	if !strings.Contains(before, `"prod"`) || !strings.Contains(before, "admin,") {
		t.Fatalf("the snapshot misses the alias or the key: %s", before)
	}

	routes := []struct{ method, path, ctype, body string }{
		{"GET", "/system/functions", "", ""},
		{"GET", "/system/functions/one", "", ""},
		{"POST", "/system/functions?name=two", "application/octet-stream", string(prog)},
		{"POST", "/system/functions?name=one", "application/octet-stream", string(prog)},
		{"DELETE", "/system/functions/one", "", ""},
		{"GET", "/system/keys", "", ""},
		{"POST", "/system/keys", "application/json", `{"name":"intruder"}`},
		{"DELETE", "/system/keys/admin", "", ""},
		{"GET", "/system/functions/one/versions", "", ""},
		{"PUT", "/system/functions/one/aliases/prod", "application/json", `{"version":2}`},
		{"DELETE", "/system/functions/one/aliases/prod", "", ""},
		{"POST", "/system/functions/one/rollback", "application/json", `{"alias":"prod"}`},
		{"GET", "/system/invocations/0123", "", ""},
		{"PATCH", "/system/functions/one/versions", "", ""},
	}
	var firstBody string
	for _, rt := range routes {
		for _, auth := range []string{"", "Bearer " + wrong, "Bearer " + revoked, "Bearer", "Basic " + admin, "bearer " + admin[:len(admin)-1]} {
			resp, b := doKey(t, auth, rt.method, e.url+rt.path, rt.ctype, []byte(rt.body))
			if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("%s %s with %.20q: %d %s, want 401 with WWW-Authenticate", rt.method, rt.path, auth, resp.StatusCode, b)
			}
			msg := decodeError(t, b).Error
			if firstBody == "" {
				firstBody = msg
				if !strings.Contains(msg, "Authorization: Bearer KEY") || !strings.Contains(msg, "kiln keys create") {
					t.Fatalf("401 says %q: want how to send a key and how to get one", msg)
				}
			}
			if msg != firstBody {
				t.Fatalf("401 bodies differ (a caller could tell why): %q vs %q", msg, firstBody)
			}
		}
	}
	if after := snapshot(t, e, keys, admin); after != before {
		t.Fatalf("refused requests changed the stores:\nbefore %s\nafter  %s", before, after)
	}

	// The scheme is case-insensitive; the admin key opens every route.
	for _, rt := range routes[:3] {
		resp, b := doKey(t, "bearer "+admin, rt.method, e.url+rt.path, rt.ctype, []byte(rt.body))
		if resp.StatusCode/100 != 2 {
			t.Fatalf("%s %s with the admin key: %d %s", rt.method, rt.path, resp.StatusCode, b)
		}
	}
	resp, b := doKey(t, "Bearer "+admin, "GET", e.url+"/system/keys", "", nil)
	var ks []apikeys.Key
	if resp.StatusCode != 200 || json.Unmarshal(b, &ks) != nil || len(ks) != 1 || ks[0].Name != "admin" || ks[0].LastUsed.IsZero() {
		t.Fatalf("keys list: %d %s; want admin alone, with a last use", resp.StatusCode, b)
	}
	if strings.Contains(string(b), admin) || strings.Contains(string(b), ks[0].Hash.String()) {
		t.Fatalf("keys list shows a key or its hash: %s", b)
	}
	// Health and metrics stay open, and a public function needs no key.
	if resp, _ := doKey(t, "", "GET", e.url+"/healthz", "", nil); resp.StatusCode != 200 {
		t.Fatalf("healthz without a key: %d", resp.StatusCode)
	}
	if resp, b := doKey(t, "", "POST", e.url+"/function/one", "", nil); resp.StatusCode != 503 {
		t.Fatalf("public function without a key: %d %s (want the no-node 503)", resp.StatusCode, b)
	}
}

func TestKeyRoutesRejectBadInput(t *testing.T) {
	keys := openKeys(t)
	e := start(t, gateway.Config{Keys: keys})
	admin := "Bearer " + createKey(t, e, "", "admin")
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/system/keys", `{"name":"Bad_Name"}`, 400, "invalid key name"},
		{"POST", "/system/keys", `{"name":`, 400, "not valid JSON"},
		{"POST", "/system/keys", `{}`, 400, "missing key name"},
		{"POST", "/system/keys", `{"name":"admin"}`, 409, "exists"},
		{"DELETE", "/system/keys/nobody", "", 404, "kiln keys list"},
	} {
		resp, b := doKey(t, admin, tc.method, e.url+tc.path, "application/json", []byte(tc.body))
		if resp.StatusCode != tc.code || !strings.Contains(decodeError(t, b).Error, tc.want) {
			t.Errorf("%s %s %s: %d %s; want %d with %q", tc.method, tc.path, tc.body, resp.StatusCode, b, tc.code, tc.want)
		}
	}
	if ks, _ := keys.List(context.Background()); len(ks) != 1 {
		t.Fatalf("bad requests changed the keys: %+v", ks)
	}
}

// While no key exists the management API is open to the gateway's own
// machine only, with or without a key store.
func TestBootstrapIsLoopbackOnly(t *testing.T) {
	reg, err := registry.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	// Never dialled: every request here ends at the gate or the registry.
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, keys := range []apikeys.Store{nil, openKeys(t)} {
		gw, err := gateway.New(gateway.Config{Registry: reg, Images: nil, Scheduler: kilnv1.NewSchedulerClient(conn), Keys: keys})
		if err == nil {
			t.Fatal("New without Images succeeded")
		}
		gw, err = gateway.New(gateway.Config{Registry: reg, Images: noImages{}, Scheduler: kilnv1.NewSchedulerClient(conn), Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		for peer, want := range map[string]int{"127.0.0.1:5000": 200, "[::1]:5000": 200, "192.0.2.7:5000": 401, "[2001:db8::1]:5000": 401, "10.0.0.1:80": 401} {
			r := httptest.NewRequest("GET", "/system/functions", nil)
			r.RemoteAddr, r.Host = peer, "localhost:8080" // httptest's example.com is a foreign name (bootstrap.go)
			w := httptest.NewRecorder()
			gw.ServeHTTP(w, r)
			if w.Code != want {
				t.Errorf("keys=%T peer %s: %d %s, want %d", keys, peer, w.Code, w.Body, want)
			}
		}
		// While no key exists, whatever key a caller sends changes nothing:
		// loopback is let in, anyone else is not.
		for peer, want := range map[string]int{"127.0.0.1:5000": 200, "192.0.2.7:5000": 401} {
			r := httptest.NewRequest("GET", "/system/functions", nil)
			r.RemoteAddr, r.Host = peer, "localhost:8080" // httptest's example.com is a foreign name (bootstrap.go)
			r.Header.Set("Authorization", "Bearer kiln_stale")
			w := httptest.NewRecorder()
			gw.ServeHTTP(w, r)
			if w.Code != want {
				t.Errorf("keys=%T: a stale key from %s: %d, want %d", keys, peer, w.Code, want)
			}
		}
		// Without a store there is nowhere to create keys.
		r := httptest.NewRequest("POST", "/system/keys", strings.NewReader(`{"name":"a"}`))
		r.RemoteAddr, r.Host = "127.0.0.1:5000", "localhost:8080"
		w := httptest.NewRecorder()
		gw.ServeHTTP(w, r)
		if keys == nil && (w.Code != 501 || !strings.Contains(w.Body.String(), "KILN_API_KEYS_FILE")) {
			t.Errorf("create a key without a store: %d %s", w.Code, w.Body)
		}
	}
}

type noImages struct{}

func (noImages) Put(context.Context, []byte) (string, error) { return "", io.ErrUnexpectedEOF }

// A read-only keys file lets its keys in and answers changes with what to
// do instead.
func TestKeysFile(t *testing.T) {
	key, h, _ := apikeys.Generate()
	path := t.TempDir() + "/keys"
	if err := writeText(path, "# ops\n"+apikeys.Line("ops", h)+"\n"); err != nil {
		t.Fatal(err)
	}
	keys, err := apikeys.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, gateway.Config{Keys: keys})
	if resp, b := doKey(t, "", "GET", e.url+"/system/functions", "", nil); resp.StatusCode != 401 {
		t.Fatalf("no key with a keys file: %d %s", resp.StatusCode, b)
	}
	if resp, b := doKey(t, "Bearer "+key, "GET", e.url+"/system/functions", "", nil); resp.StatusCode != 200 {
		t.Fatalf("file key: %d %s", resp.StatusCode, b)
	}
	resp, b := doKey(t, "Bearer "+key, "POST", e.url+"/system/keys", "", []byte(`{"name":"ci"}`))
	if resp.StatusCode != 409 || !strings.Contains(decodeError(t, b).Error, "add the line") {
		t.Fatalf("create a key in a keys file: %d %s", resp.StatusCode, b)
	}
}

func writeText(path, text string) error { return os.WriteFile(path, []byte(text), 0o600) }
