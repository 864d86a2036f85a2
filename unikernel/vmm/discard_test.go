package vmm_test

// Giving memory back on a restored VM (issue 13, finding 1): guests/
// discard-storm frees every other 4 KiB page of a region, one madvise —
// one KILN_HC_DISCARD — per page. The host's mapping of a restored guest's
// RAM once split at every discard, until the process (a worker, with up to
// 256 VMs of other functions) hit vm.max_map_count and the Go runtime died.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// storm is what one run of discard-storm showed the host.
type storm struct {
	res              *vmm.Result
	discards         int
	guestUS          int64         // the storm as the guest timed it
	elapsed          time.Duration // the storm as the host saw it (request to answer)
	mapsBefore       int           // this process's mappings when the region was filled
	mapsAfter        int           // and after the storm
	rssBefore, rssAt uint64        // the snapshot mapping's RSS then (restored VMs only)
	privBefore       uint64        // and its private pages (the guest's own copies)
	privAt           uint64
}

// runStorm runs discard-storm in cfg (Args set) through its three steps,
// measuring this process between them; rssOf, if set, names the file whose
// mapping's RSS to read.
func runStorm(t *testing.T, cfg vmm.Config, rssOf string) storm {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var errb bytes.Buffer
	cfg.Stdin, cfg.Stdout, cfg.Stderr = inR, outW, &errb
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	done := make(chan *vmm.Result, 1)
	go func() {
		res, err := vm.Run(ctx)
		if res == nil {
			res = &vmm.Result{Message: err.Error()}
		}
		outW.Close()
		done <- res
	}()
	out := bufio.NewReader(outR)
	line := func(want string) string {
		t.Helper()
		l, err := out.ReadString('\n')
		if err != nil || !strings.HasPrefix(l, want) {
			inW.Close()
			r := <-done
			t.Fatalf("guest said %q (%v), want %q; ended %d %q; stderr %q", l, err, want, r.Reason, r.Message, errb.String())
		}
		return l
	}
	var s storm
	rss := func(field string) uint64 {
		if rssOf == "" {
			return 0
		}
		return smapsSum(t, rssOf, field)
	}
	inW.Write([]byte("go\n"))
	line("filled")
	s.mapsBefore, s.rssBefore, s.privBefore = mapCount(t), rss("Rss"), rss("Private_Dirty")
	start := time.Now()
	inW.Write([]byte("storm\n"))
	l := line("SUCCESS")
	s.elapsed = time.Since(start)
	// The guest has read every page back: the freed ones are mapped again,
	// as the file's zero pages (shared page cache, in Rss), so what shows
	// the memory given back is the private part.
	s.mapsAfter, s.rssAt, s.privAt = mapCount(t), rss("Rss"), rss("Private_Dirty")
	if _, err := fmt.Sscanf(l, "SUCCESS discards=%d storm_us=%d", &s.discards, &s.guestUS); err != nil {
		t.Fatalf("answer %q: %v", l, err)
	}
	inW.Close()
	s.res = <-done
	if s.res.Reason != vmm.ReasonExited || s.res.Status != 0 {
		t.Fatalf("ended %d status %d %q; stderr %q", s.res.Reason, s.res.Status, s.res.Message, errb.String())
	}
	return s
}

// mapCount is the number of this process's mappings.
func mapCount(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// smapsSum sums field ("Rss", "Private_Dirty", ...) over this process's
// mappings of path.
func smapsSum(t *testing.T, path, field string) uint64 {
	raw, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	in := false
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) > 0 && !strings.HasSuffix(f[0], ":") {
			in = len(f) > 5 && strings.Join(f[5:], " ") == path
			continue
		}
		var kb uint64
		if _, err := fmt.Sscanf(l, field+": %d kB", &kb); err == nil && in {
			total += kb << 10
		}
	}
	return total
}

// stormConfig is discard-storm over mib MiB, filled at when ("pre" or
// "post" its first read of stdin), in a VM of mem bytes.
func stormConfig(t *testing.T, mem uint64, mib int, when string) vmm.Config {
	return vmm.Config{
		Kernel:  kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, "guests/discard-storm"),
		Args:    []string{"discard-storm", fmt.Sprint(mib), when},
		MemSize: mem,
	}
}

// snapshotStorm boots cfg, taking its snapshot at the first read of stdin,
// lets it run its storm, opens the snapshot and names its restores' mapping
// in /proc/self/smaps (the sealed copy, not the file).
func snapshotStorm(t *testing.T, cfg vmm.Config) (storm, *vmm.Snapshot, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "storm.snap")
	snapErr := make(chan error, 1)
	bc := cfg
	bc.SnapshotPath = path
	bc.OnSnapshot = func(err error) { snapErr <- err }
	booted := runStorm(t, bc, "")
	if err := <-snapErr; err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	snap, err := vmm.OpenSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { snap.Close() })
	// Restores map the snapshot's sealed copy, not the file (OpenSnapshot).
	return booted, snap, "/memfd:kiln-snapshot:storm.snap (deleted)"
}

// TestDiscardStormRestored: the benign program of the issue — 51,200
// one-page discards of a 400 MiB region it filled after its first read of
// stdin, as an exec function runs — ends normally on a restored VM, gives
// the memory back (the mapping's RSS falls by about half the region) and
// adds no host mappings; the booted VM it was snapshotted from does the
// same. It used to end with "discard 4096 bytes of guest memory: cannot
// allocate memory" or with the whole process dead.
func TestDiscardStormRestored(t *testing.T) {
	kvmtest.Require(t)
	const mib = 400
	cfg := stormConfig(t, 512<<20, mib, "post")
	booted, snap, path := snapshotStorm(t, cfg)
	rc := cfg
	rc.Snapshot = snap
	restored := runStorm(t, rc, path)
	for name, s := range map[string]storm{"booted": booted, "restored": restored} {
		t.Logf("%s: %d discards in %v (guest: %d ms, %d exits); mappings %d → %d; snapshot mapping RSS %d → %d MiB, private %d → %d MiB",
			name, s.discards, s.elapsed.Round(time.Millisecond), s.guestUS/1000, s.res.Stats.Exits,
			s.mapsBefore, s.mapsAfter, s.rssBefore>>20, s.rssAt>>20, s.privBefore>>20, s.privAt>>20)
		if s.discards != mib<<20/4096/2 {
			t.Errorf("%s: %d discards, want %d", name, s.discards, mib<<20/4096/2)
		}
		if s.res.Stats.Discards < uint64(s.discards) {
			t.Errorf("%s: the VMM served %d discards, the guest made %d", name, s.res.Stats.Discards, s.discards)
		}
		if s.mapsAfter > s.mapsBefore+16 {
			t.Errorf("%s: the storm took the process from %d to %d mappings", name, s.mapsBefore, s.mapsAfter)
		}
	}
	// The region filled is the guest's own (private) memory; half of it
	// went back to the host.
	if restored.privBefore < mib<<20 {
		t.Errorf("restored: %d MiB private after filling %d MiB", restored.privBefore>>20, mib)
	}
	if drop := int64(restored.privBefore) - int64(restored.privAt); drop < mib<<20/2-16<<20 {
		t.Errorf("restored: private memory of the mapping fell by %d MiB, want about %d", drop>>20, mib/2)
	}
}

// TestDiscardStormSnapshotPages: discards of pages the snapshot holds
// (the region filled before the first read) cannot fall back to the file;
// they are zeroed in place — the guest reads zeros, the neighbours keep
// their bytes — still without a host mapping per discard.
func TestDiscardStormSnapshotPages(t *testing.T) {
	kvmtest.Require(t)
	const mib = 24
	cfg := stormConfig(t, 64<<20, mib, "pre")
	_, snap, path := snapshotStorm(t, cfg)
	if snap.Pages() < mib<<20/4096 {
		t.Fatalf("the snapshot holds %d pages, want the %d MiB region in it", snap.Pages(), mib)
	}
	rc := cfg
	rc.Snapshot = snap
	s := runStorm(t, rc, path)
	t.Logf("restored, region in the snapshot: %d discards in %v; mappings %d → %d",
		s.discards, s.elapsed.Round(time.Millisecond), s.mapsBefore, s.mapsAfter)
	if s.mapsAfter > s.mapsBefore+16 {
		t.Errorf("the storm took the process from %d to %d mappings", s.mapsBefore, s.mapsAfter)
	}
}
