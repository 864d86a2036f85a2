package platform_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
)

// kiln up's roles are not reachable by another user of the machine (issue
// 13, finding 3: on 127.0.0.1 ports any local process could call
// Agent.Invoke): their gRPC is on unix sockets, 0600, in a 0700 directory
// of the data directory. Another uid (nobody, in a child process) cannot
// connect — refused by the directory, and by the socket's own mode when
// the directory is opened — and connects when the socket is opened to
// all, so the refusals are the modes' doing.
func TestUpSocketsPrivate(t *testing.T) {
	// World-traversable, unlike t.TempDir(): only the sockets' own
	// directory and modes may keep the other user out.
	data, err := os.MkdirTemp("", "kiln-up-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	os.Chmod(data, 0o755)
	prog := staticProgram(t)
	p, err := platform.Up(context.Background(), platform.Config{DataDir: data, HTTPAddr: "127.0.0.1:0",
		KernelPath: prog, Runtime: platform.RuntimeProcess})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if !p.Agent {
		t.Fatal("no agent started")
	}
	dir := filepath.Join(data, platform.SocketDir)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory: %v %v", fi.Mode(), err)
	}
	for _, name := range []string{"scheduler.sock", "agent.sock"} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", name, fi.Mode(), err)
		}
	}
	// The platform works over them: gateway → scheduler → agent.
	b, _ := os.ReadFile(prog)
	if resp, body := httpDo(t, "POST", p.URL+"/system/functions?name=nop&kind=exec", b); resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, body)
	}
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, body := httpDo(t, "POST", p.URL+"/function/nop", nil)
		if resp.StatusCode == 200 {
			break
		}
		if resp.StatusCode != 503 || time.Now().After(end) {
			t.Fatalf("invoke: %d %s", resp.StatusCode, body)
		}
	}

	if os.Geteuid() != 0 {
		t.Skip("SKIPPING the other-user part: only root can run a process as nobody")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("SKIPPING the other-user part: no user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	// This test binary, copied where nobody may run it, tries to connect
	// (main_test.go, dialUnix).
	binDir, err := os.MkdirTemp("", "kiln-dial-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(binDir) })
	os.Chmod(binDir, 0o755)
	self, _ := os.Executable()
	bin := filepath.Join(binDir, "dial")
	copyFile(t, self, bin, 0o755)
	dialAsNobody := func(path string) (bool, string) {
		cmd := exec.Command(bin)
		cmd.Env = []string{dialUnixEnv + "=" + path}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		out, err := cmd.CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == "connected", strings.TrimSpace(string(out))
	}
	for _, name := range []string{"scheduler.sock", "agent.sock"} {
		sock := filepath.Join(dir, name)
		if ok, out := dialAsNobody(sock); ok || !strings.Contains(out, "permission denied") {
			t.Errorf("nobody connecting to %s: %s", name, out)
		}
		// Past the directory, the socket's 0600 refuses too.
		os.Chmod(dir, 0o755)
		if ok, out := dialAsNobody(sock); ok || !strings.Contains(out, "permission denied") {
			t.Errorf("nobody connecting to %s through an open directory: %s", name, out)
		}
		// The control: opened to all, the same child connects.
		os.Chmod(sock, 0o666)
		if ok, out := dialAsNobody(sock); !ok {
			t.Errorf("nobody could not connect to %s opened to all, so the refusals above prove nothing: %s", name, out)
		}
		os.Chmod(sock, 0o600)
		os.Chmod(dir, 0o700)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
