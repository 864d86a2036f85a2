package vmhost

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// ensureCgroups mounts cgroup v2 at /sys/fs/cgroup when the host has no
// cgroup file system at all (the QEMU box boots a bare initramfs), so that
// the jail's cgroups are tested there too, on v2.
func ensureCgroups() {
	if os.Geteuid() != 0 {
		return
	}
	if b, _ := os.ReadFile("/proc/self/mounts"); bytes.Contains(b, []byte(" cgroup")) {
		return
	}
	if err := unix.Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, ""); err != nil {
		fmt.Fprintln(os.Stderr, "vmhost tests: no cgroup file system, and mounting cgroup2 failed:", err)
	}
}

// echoOnce boots a stand-in VM, feeds it the lines and returns its
// stdout and how it ended.
func echoOnce(t *testing.T, h *Host, in string) (string, *vmm.Result, error) {
	t.Helper()
	var out bytes.Buffer
	cfg := echoCfg()
	cfg.Stdin, cfg.Stdout = strings.NewReader(in), &out
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	r, err := run(t, v, time.Minute)
	return out.String(), r, err
}

// statusField is a field of a /proc/PID/task/TID/status file.
func statusField(t *testing.T, status []byte, name string) string {
	t.Helper()
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == name {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	t.Fatalf("no %s in status", name)
	return ""
}

// A jailed worker, seen from the host and from inside (the stand-in VM
// runs in the worker, as a VMM a guest took over would): not root, in
// every thread; no capabilities; no_new_privs and the seccomp filter on
// every thread; its own namespaces; a root holding only /dev/kvm that it
// cannot write, so neither /etc/passwd nor the agent's data dir; no
// network but lo; none of the agent's environment; a cgroup whose memory
// limit follows its VMs.
func TestJail(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the jail needs root; run the vmhost tests as root")
	}
	t.Setenv("KILN_API_KEY", "agent-secret") // the agent's environment
	dataDir := t.TempDir()
	os.WriteFile(filepath.Join(dataDir, "state"), []byte("agent data"), 0o644)
	h := newHost(t, Config{})

	out, r, err := echoOnce(t, h, fmt.Sprintf("!open /etc/passwd %s\n!open %s/state /\n!image\n", dataDir, dataDir))
	if err != nil || r.Reason != vmm.ReasonExited {
		t.Fatalf("run: %+v %v", r, err)
	}
	t.Logf("inside the jail:\n%s", out)
	for _, want := range []string{
		"read: open /etc/passwd: no such file or directory",
		"write: open " + dataDir + "/jail-probe: no such file or directory",
		"read: open " + dataDir + "/state: no such file or directory",
		"write: open //jail-probe: read-only file system",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("inside the jail: no %q", want)
		}
	}

	// A VM kept running holds the worker for inspection.
	inR, inW, _ := os.Pipe()
	defer inW.Close()
	cfg := echoCfg()
	cfg.Stdin = inR
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	inR.Close()
	pid := h.Workers()[0]
	proc := fmt.Sprintf("/proc/%d", pid)

	tasks, _ := os.ReadDir(proc + "/task")
	if len(tasks) < 2 {
		t.Fatalf("%d threads", len(tasks))
	}
	for _, task := range tasks {
		st, err := os.ReadFile(proc + "/task/" + task.Name() + "/status")
		if err != nil {
			t.Fatal(err)
		}
		for field, want := range map[string]string{
			"Uid": "65534 65534 65534 65534", "Gid": "65534 65534 65534 65534", "Groups": "",
			"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
			"CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2",
		} {
			if got := statusField(t, st, field); got != want {
				t.Errorf("thread %s: %s %q, want %q", task.Name(), field, got, want)
			}
		}
	}
	for _, ns := range []string{"mnt", "pid", "net", "ipc", "uts"} {
		ours, _ := os.Readlink("/proc/self/ns/" + ns)
		its, err := os.Readlink(proc + "/ns/" + ns)
		if err != nil || its == ours {
			t.Errorf("namespace %s: the worker's %q (%v), the agent's %q", ns, its, err, ours)
		}
	}
	var files []string
	filepath.WalkDir(proc+"/root/", func(p string, d os.DirEntry, err error) error {
		if err == nil {
			files = append(files, strings.TrimSuffix(strings.TrimPrefix(p, proc+"/root"), "/"))
		}
		return nil
	})
	want := []string{"", "/dev"}
	if _, err := os.Stat("/dev/kvm"); err == nil {
		want = append(want, "/dev/kvm")
	}
	if !slices.Equal(files, want) {
		t.Errorf("the worker's root holds %q, want %q", files, want)
	}
	netdev, _ := os.ReadFile(proc + "/net/dev")
	var ifaces []string
	for _, l := range strings.Split(string(netdev), "\n")[2:] {
		if name, _, ok := strings.Cut(l, ":"); ok {
			ifaces = append(ifaces, strings.TrimSpace(name))
		}
	}
	if !slices.Equal(ifaces, []string{"lo"}) {
		t.Errorf("the worker's network interfaces: %q, want only lo", ifaces)
	}
	env, _ := os.ReadFile(proc + "/environ")
	if bytes.Contains(env, []byte("agent-secret")) || bytes.Contains(env, []byte("KILN_API_KEY")) {
		t.Errorf("the agent's secret reached the worker: %q", env)
	}
	for _, kv := range bytes.Split(bytes.TrimRight(env, "\x00"), []byte{0}) {
		k, _, _ := strings.Cut(string(kv), "=")
		if !slices.Contains(keepEnv, k) && k != statsEnv && k != jailEnv {
			t.Errorf("the worker's environment holds %q", kv)
		}
	}

	// Its cgroup: the worker is in it, the limit follows its VMs.
	w := h.workerByPid(pid)
	if h.cg == nil || w == nil || w.cg == nil {
		t.Fatal("no cgroup for the worker on this host")
	}
	cgs, _ := os.ReadFile(proc + "/cgroup")
	if !strings.Contains(string(cgs), cgroupDir+"/w") {
		t.Errorf("the worker's cgroups:\n%s", cgs)
	}
	charge := vmCharge(cfg)
	if got, _ := w.cg.memoryLimit(); got != workerOverhead+charge {
		t.Errorf("memory limit with one VM: %d, want %d", got, workerOverhead+charge)
	}
	big := echoCfg()
	big.MemSize = 256 << 20
	v2, err := h.Boot(big)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := w.cg.memoryLimit(); got != workerOverhead+charge+vmCharge(big) {
		t.Errorf("memory limit with two VMs: %d, want %d", got, workerOverhead+charge+vmCharge(big))
	}
	v2.Close()
	if got, _ := w.cg.memoryLimit(); got != workerOverhead+charge {
		t.Errorf("memory limit once the second VM left: %d, want %d", got, workerOverhead+charge)
	}
	if b, _ := os.ReadFile(w.cg.file("pids", "pids.max", "pids.max")); strings.TrimSpace(string(b)) != fmt.Sprint(workerPids(h.per)) {
		t.Errorf("pids.max %q", b)
	}
}

// workerByPid finds a live worker (tests).
func (h *Host) workerByPid(pid int) *worker {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.workers {
		if w.pid == pid {
			return w
		}
	}
	return nil
}

// A worker making a syscall outside its allow-list — here socket(2), what
// a VMM taken over would use to reach the network — dies at once, with
// every VM on it, and the agent says why.
func TestJailSeccompKills(t *testing.T) {
	h := newHost(t, Config{})
	// A bystander on the same worker ends with it: that is the price; a
	// new worker serves the next Boot.
	out, r, err := echoOnce(t, h, "before\n!forbidden\nafter\n")
	if !errors.Is(err, ErrWorker) {
		t.Fatalf("run: %+v, %v (stdout %q)", r, err, out)
	}
	// The syscall is named when the kernel's audit record of the kill is
	// in its log (printk rate-limits them: a flood elsewhere drops it).
	msg := err.Error()
	if !strings.Contains(msg, "killed by seccomp (") ||
		(strings.Contains(msg, "(syscall") && !strings.Contains(msg, "killed by seccomp (syscall 41 socket)")) {
		t.Errorf("the error does not say the worker was killed by seccomp for socket(2): %v", err)
	}
	t.Logf("the agent's account: %v", err)
	if strings.Contains(out, "socket:") {
		t.Errorf("the forbidden syscall returned: %q", out)
	}
	out, r, err = echoOnce(t, h, "next\n")
	if err != nil || out != "next\n" {
		t.Fatalf("the next VM: %q %+v %v", out, r, err)
	}
}

// --no-jail: the worker runs as before, as root with the agent's
// environment — the contrast that shows TestJail can fail.
func TestNoJail(t *testing.T) {
	t.Setenv("KILN_API_KEY", "agent-secret")
	dataDir := t.TempDir()
	os.WriteFile(filepath.Join(dataDir, "state"), []byte("agent data"), 0o644)
	h := newHost(t, Config{NoJail: true})
	out, _, err := echoOnce(t, h, fmt.Sprintf("!open %s/state %s\n", dataDir, dataDir))
	if err != nil || out != "read: <nil>\nwrite: <nil>\n" {
		t.Fatalf("unjailed: %q %v", out, err)
	}
}

// A worker that cannot enter its jail says why, and the Boot fails with
// ErrJail instead of running the VM unjailed.
func TestJailFailureRefusesBoot(t *testing.T) {
	h := newHost(t, Config{})
	h.uid = -1 // a spec the worker refuses
	_, err := h.Boot(echoCfg())
	if !errors.Is(err, ErrJail) || !errors.Is(err, ErrWorker) || !strings.Contains(err.Error(), "KILN_VMHOST_JAIL") {
		t.Fatalf("boot: %v", err)
	}
}

// Cgroup v2 (the production layout), on a stand-in of its file system:
// the workers' cgroups go beside the agent's own, with the controllers
// delegated, and their files say what cgroup.go means.
func TestCgroupV2Layout(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644)
	slice := filepath.Join(root, "system.slice")
	os.MkdirAll(filepath.Join(slice, cgroupDir), 0o755)
	os.WriteFile(filepath.Join(slice, cgroupDir, "cgroup.controllers"), []byte("cpu memory pids\n"), 0o644)
	cg, err := findCgroups(root, []byte("0::/system.slice/kiln.service\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cg.v2 != filepath.Join(slice, cgroupDir) {
		t.Fatalf("v2 at %q", cg.v2)
	}
	g, err := cg.create(100)
	if err != nil {
		t.Fatal(err)
	}
	g.resize(300<<20, 3)
	read := func(f string) string {
		b, _ := os.ReadFile(filepath.Join(g.v2, f))
		return string(b)
	}
	if read("memory.max") != fmt.Sprint(workerOverhead+300<<20) || read("pids.max") != "100" || read("cpu.weight") != "300" {
		t.Fatalf("memory.max %q pids.max %q cpu.weight %q", read("memory.max"), read("pids.max"), read("cpu.weight"))
	}
	// Lowering never goes under the usage (the kernel would kill).
	os.WriteFile(filepath.Join(g.v2, "memory.current"), []byte(fmt.Sprint(workerOverhead+200<<20)), 0o644)
	g.resize(-300<<20, -3)
	if read("memory.max") != fmt.Sprint(workerOverhead+201<<20) || read("cpu.weight") != "100" {
		t.Fatalf("after the VMs left: memory.max %q cpu.weight %q", read("memory.max"), read("cpu.weight"))
	}
	if _, err := findCgroups(t.TempDir(), []byte("0::/\n")); err == nil {
		t.Fatal("no hierarchy, yet found one")
	}
}
