package vmhost

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// A cgroup per jailed worker bounds what one worker — and so a guest that
// took it over — can take from the host:
//
//   - memory: the guest memory of the VMs placed on it, twice their
//     images (read into the worker's heap; the garbage collector lets the
//     heap grow to twice what is live) and vmOverhead each, plus
//     workerOverhead for the process itself; raised before a VM boots and
//     lowered once it is freed (never below what the worker uses then:
//     lowering a limit under the usage would have the kernel kill it);
//   - pids: workerPids(PerWorker) threads (a worker cannot fork: seccomp);
//   - CPU: a weight of cpuWeightPerVM per VM, so under contention each VM
//     weighs the same whichever worker holds it.
//
// Cgroup v2 (one hierarchy, /sys/fs/cgroup on production hosts) is used
// when it has the memory controller: workers' cgroups go in kiln-vmhost
// beside the agent's own cgroup (a v2 cgroup with processes cannot have
// children with controllers). Else cgroup v1 (a hierarchy per controller,
// as on the development machine): kiln-vmhost under the agent's own
// cgroup in each. Neither usable: the Host logs it loudly and goes on, the
// other layers of the jail still hold.
const (
	workerOverhead = 128 << 20
	vmOverhead     = 16 << 20
	cpuWeightPerVM = 100
	cgroupDir      = "kiln-vmhost"
)

// workerPids is a worker's pids limit: the runtime's threads, a vCPU
// thread per VM and threads blocked in reads of its streams.
func workerPids(per int) int { return 256 + 4*per }

// cgroups is where a Host makes its workers' cgroups.
type cgroups struct {
	v2   string            // v2: the directory workers' cgroups are made in
	v1   map[string]string // v1: controller → that directory in its hierarchy
	what string            // for the log
}

// cgroupSeq numbers this process's worker cgroups (one process may run
// several Hosts: tests do).
var cgroupSeq atomic.Uint64

// cgroupControllers are the controllers a worker's cgroup uses.
var cgroupControllers = []string{"memory", "pids", "cpu"}

// findCgroups finds a usable hierarchy under root (/sys/fs/cgroup), given
// the agent's /proc/self/cgroup, and prepares kiln-vmhost there. nil and
// why when there is none.
func findCgroups(root string, self []byte) (*cgroups, error) {
	own := map[string]string{} // controller ("" for v2) → the agent's cgroup
	for _, line := range strings.Split(string(self), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			own[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			own[c] = parts[2]
		}
	}
	var why []string
	for _, mnt := range []string{root, filepath.Join(root, "unified")} {
		have, err := os.ReadFile(filepath.Join(mnt, "cgroup.controllers"))
		if err != nil {
			continue
		}
		if !slices.Contains(strings.Fields(string(have)), "memory") {
			why = append(why, fmt.Sprintf("cgroup v2 at %s has no memory controller (%q)", mnt, strings.TrimSpace(string(have))))
			continue
		}
		cg, err := setupV2(mnt, own[""])
		if err == nil {
			return cg, nil
		}
		why = append(why, err.Error())
	}
	cg := &cgroups{v1: map[string]string{}}
	for _, c := range cgroupControllers {
		mnt := filepath.Join(root, c)
		if _, err := os.Stat(filepath.Join(mnt, "cgroup.procs")); err != nil {
			why = append(why, fmt.Sprintf("no cgroup v1 %s hierarchy at %s", c, mnt))
			continue
		}
		dir := filepath.Join(mnt, own[c], cgroupDir)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			why = append(why, fmt.Sprintf("cgroup v1 %s: %v", c, err))
			continue
		}
		cg.v1[c] = dir
	}
	if cg.v1["memory"] == "" {
		return nil, fmt.Errorf("no usable cgroup hierarchy with a memory controller: %s", strings.Join(why, "; "))
	}
	var dirs []string
	for _, c := range cgroupControllers {
		if d := cg.v1[c]; d != "" {
			dirs = append(dirs, d)
		}
	}
	cg.what = "cgroup v1: " + strings.Join(dirs, ", ")
	return cg, nil
}

// setupV2 prepares kiln-vmhost beside the agent's cgroup own, with the
// controllers delegated to it.
func setupV2(mnt, own string) (*cgroups, error) {
	parent := filepath.Join(mnt, filepath.Dir(filepath.Clean("/"+own)))
	dir := filepath.Join(parent, cgroupDir)
	enable := func(d string) {
		for _, c := range cgroupControllers {
			// Each alone: one the kernel lacks must not stop the others.
			os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+"+c), 0)
		}
	}
	enable(parent)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup v2: %w", err)
	}
	enable(dir)
	on, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("cgroup v2: %w", err)
	}
	if !slices.Contains(strings.Fields(string(on)), "memory") {
		return nil, fmt.Errorf("cgroup v2: the memory controller cannot be enabled for %s (its parent %s may hold processes)", dir, parent)
	}
	return &cgroups{v2: dir, what: fmt.Sprintf("cgroup v2: %s (%s)", dir, strings.TrimSpace(string(on)))}, nil
}

// workerCgroup is one worker's cgroup.
type workerCgroup struct {
	v2   string            // its directory, under v2
	v1   map[string]string // controller → its directory, under v1
	pids int

	mu      sync.Mutex // guards the fields below
	charged int64      // what its VMs are charged
	vms     int
	limit   int64 // the memory limit last set
}

// create makes a worker's cgroup, named for the agent and a sequence
// number (several agents may share a host: tests do).
func (cg *cgroups) create(pids int) (*workerCgroup, error) {
	name := fmt.Sprintf("w%d-%d", os.Getpid(), cgroupSeq.Add(1))
	g := &workerCgroup{pids: pids}
	if cg.v2 != "" {
		g.v2 = filepath.Join(cg.v2, name)
		if err := os.Mkdir(g.v2, 0o755); err != nil {
			return nil, err
		}
	} else {
		g.v1 = map[string]string{}
		for c, d := range cg.v1 {
			dir := filepath.Join(d, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				g.remove()
				return nil, err
			}
			g.v1[c] = dir
		}
	}
	if err := g.setPids(); err != nil {
		g.remove()
		return nil, err
	}
	if err := g.resize(0, 0); err != nil {
		g.remove()
		return nil, err
	}
	return g, nil
}

// file is the path of a controller's file, "" when that controller is not
// there.
func (g *workerCgroup) file(controller, v2, v1 string) string {
	if g.v2 != "" {
		return filepath.Join(g.v2, v2)
	}
	if d := g.v1[controller]; d != "" {
		return filepath.Join(d, v1)
	}
	return ""
}

func (g *workerCgroup) write(controller, v2, v1, value string) error {
	p := g.file(controller, v2, v1)
	if p == "" {
		return nil
	}
	if err := os.WriteFile(p, []byte(value), 0); err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	return nil
}

func (g *workerCgroup) setPids() error {
	return g.write("pids", "pids.max", "pids.max", strconv.Itoa(g.pids))
}

// add puts a process in the cgroup (every hierarchy, under v1).
func (g *workerCgroup) add(pid int) error {
	if g.v2 != "" {
		return g.write("", "cgroup.procs", "", strconv.Itoa(pid))
	}
	for _, c := range cgroupControllers {
		if err := g.write(c, "", "cgroup.procs", strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// resize charges (or, negative, uncharges) bytes and vms, and sets the
// memory limit and CPU weight to match.
func (g *workerCgroup) resize(bytes int64, vms int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.charged += bytes
	g.vms += vms
	limit := workerOverhead + g.charged
	if limit < g.limit {
		// Never under the usage: the kernel would kill the worker (v2) or
		// refuse (v1). The next resize lowers it further.
		if used := g.usage(); used > limit {
			limit = (used + 1<<20) &^ (1<<20 - 1)
		}
	}
	var errs []error
	if limit != g.limit {
		if err := g.write("memory", "memory.max", "memory.limit_in_bytes", strconv.FormatInt(limit, 10)); err != nil {
			errs = append(errs, err)
		} else {
			g.limit = limit
		}
	}
	weight := min(cpuWeightPerVM*max(1, g.vms), 10000)
	if g.v2 == "" {
		weight = weight * 1024 / 100 // cpu.shares: 1024 is v2's 100
	}
	errs = append(errs, g.write("cpu", "cpu.weight", "cpu.shares", strconv.Itoa(weight)))
	return errors.Join(errs...)
}

// usage is the memory the cgroup uses now; 0 if unknown.
func (g *workerCgroup) usage() int64 {
	b, err := os.ReadFile(g.file("memory", "memory.current", "memory.usage_in_bytes"))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// memoryLimit is the limit the kernel holds now (tests, the log).
func (g *workerCgroup) memoryLimit() (int64, error) {
	b, err := os.ReadFile(g.file("memory", "memory.max", "memory.limit_in_bytes"))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// oomKilled says whether the kernel's OOM killer killed a process of the
// cgroup (the worker hit its memory limit).
func (g *workerCgroup) oomKilled() bool {
	b, err := os.ReadFile(g.file("memory", "memory.events", "memory.oom_control"))
	if err != nil {
		return false
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if f := strings.Fields(string(line)); len(f) == 2 && f[0] == "oom_kill" && f[1] != "0" {
			return true
		}
	}
	return false
}

// remove deletes the cgroup once its process is gone.
func (g *workerCgroup) remove() {
	if g.v2 != "" {
		unix.Rmdir(g.v2)
	}
	for _, d := range g.v1 {
		unix.Rmdir(d)
	}
}

// vmCharge is what one VM is charged in its worker's cgroup.
func vmCharge(cfg vmm.Config) int64 {
	mem := cfg.MemSize
	if cfg.Snapshot != nil {
		mem = cfg.Snapshot.MemSize()
	}
	if mem == 0 {
		mem = vmm.DefaultMemSize
	}
	return int64(mem) + 2*int64(len(cfg.Kernel)+len(cfg.Program)) + vmOverhead
}

// sweep removes the worker cgroups agents that are gone left behind
// (killed before they could remove them): empty, of a pid not running.
func (cg *cgroups) sweep() {
	var dirs []string
	if cg.v2 != "" {
		dirs = append(dirs, cg.v2)
	}
	for _, d := range cg.v1 {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			var pid, seq int
			if _, err := fmt.Sscanf(e.Name(), "w%d-%d", &pid, &seq); err != nil || !e.IsDir() {
				continue
			}
			if pid == os.Getpid() || unix.Kill(pid, 0) != unix.ESRCH {
				continue
			}
			unix.Rmdir(filepath.Join(d, e.Name()))
		}
	}
}
