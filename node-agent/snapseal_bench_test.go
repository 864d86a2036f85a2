package nodeagent

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// TestSnapshotRestoreReport measures restores of hello-go at the agent
// (fresh instances, so each call is a restore): the first, which opens and
// verifies the snapshot, and the median of the next KILN_SEAL_N (30), with
// the host's shared memory (Shmem in /proc/meminfo) before the snapshot
// was opened and after. docs/BENCHMARKS.md compares restores of a sealed
// copy (now) with restores of the file (before). Run with
// KILN_BENCH_SEAL=1 KILN_REQUIRE_KVM=1.
func TestSnapshotRestoreReport(t *testing.T) {
	if os.Getenv("KILN_BENCH_SEAL") == "" {
		t.Skip("a report: KILN_BENCH_SEAL=1")
	}
	h, kernel := kvmHarness(t)
	d := h.add(t, "hello-go", image.KindServe, kernel, kvmtest.Artifact(t, filepath.Join("examples", "hello-go", "hello-go")), 30*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "hello-go", ImageDigest: d, Fresh: true}
	expect(t, h.invokeFn(t, fn, "/", "boot"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	shm0 := shmem(t)
	r := h.invokeFn(t, fn, "/", "first")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_RESTORE)
	first := time.Duration(r.StartNs)
	n := 30
	fmt.Sscan(os.Getenv("KILN_SEAL_N"), &n)
	var starts []time.Duration
	for range n {
		r := h.invokeFn(t, fn, "/", "x")
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_RESTORE)
		starts = append(starts, time.Duration(r.StartNs))
	}
	shm1 := shmem(t)
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	files, _ := filepath.Glob(filepath.Join(h.dir, "cache", "snapshots", "*.snap"))
	var pages uint64
	if len(files) == 1 {
		if s, err := openForReport(files[0]); err == nil {
			pages = s
		}
	}
	t.Logf("hello-go: snapshot %d non-zero pages (%.1f MiB); first restore start %.2f ms; median of %d restores %.2f ms (min %.2f, max %.2f); Shmem %+.1f MiB",
		pages, float64(pages*4096)/(1<<20), ms(first), n, ms(starts[n/2]), ms(starts[0]), ms(starts[n-1]), float64(shm1-shm0)/(1<<20))
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// shmem is the host's Shmem (/proc/meminfo), in bytes.
func shmem(t *testing.T) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "Shmem:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return kb << 10
		}
	}
	return 0
}

// openForReport is the snapshot file's non-zero page count.
func openForReport(path string) (uint64, error) {
	s, err := vmm.OpenSnapshot(path)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	return s.Pages(), nil
}
