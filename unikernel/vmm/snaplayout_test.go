package vmm

import (
	"bytes"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// pageMap is a snapshot page map (Snapshot.nonZero) of n pages with the
// pages of runs set.
func pageMap(n uint64, runs ...pageRun) []uint64 {
	m := make([]uint64, (n+63)/64)
	for _, r := range runs {
		for p := r.start; p < r.end; p++ {
			m[p/64] |= 1 << (p % 64)
		}
	}
	return m
}

func mapBit(m []uint64, p uint64) bool { return m[p/64]>>(p%64)&1 != 0 }

// checkLayout checks what planSnapLayout promises for any page map: at
// most snapMaxMaps runs mapped and snapGapBudget hole pages among them;
// every non-zero page mapped or copied, exactly once; nothing copied that
// is zero; mapped runs start and end on non-zero pages.
func checkLayout(t *testing.T, m []uint64, n uint64, l snapLayout) {
	t.Helper()
	if len(l.mapped) > snapMaxMaps {
		t.Fatalf("%d runs mapped, the bound is %d", len(l.mapped), snapMaxMaps)
	}
	if l.gapPages > snapGapBudget {
		t.Fatalf("%d hole pages mapped, the budget is %d", l.gapPages, snapGapBudget)
	}
	seen := make([]byte, n)
	var gaps uint64
	for _, r := range l.mapped {
		if r.start >= r.end || r.end > n || !mapBit(m, r.start) || !mapBit(m, r.end-1) {
			t.Fatalf("mapped run %v", r)
		}
		for p := r.start; p < r.end; p++ {
			seen[p]++
			if !mapBit(m, p) {
				gaps++
			}
		}
	}
	for _, r := range l.copied {
		if r.start >= r.end || r.end > n {
			t.Fatalf("copied run %v", r)
		}
		for p := r.start; p < r.end; p++ {
			seen[p]++
			if !mapBit(m, p) {
				t.Fatalf("page %d copied, it is zero", p)
			}
		}
	}
	if gaps != l.gapPages {
		t.Fatalf("%d hole pages mapped, the layout says %d", gaps, l.gapPages)
	}
	for p := uint64(0); p < n; p++ {
		if seen[p] > 1 || mapBit(m, p) && seen[p] != 1 {
			t.Fatalf("page %d (non-zero %v) laid out %d times", p, mapBit(m, p), seen[p])
		}
	}
}

// TestPlanSnapLayout: runs merged across short holes within the budget,
// the runs past snapMaxMaps copied (the smallest), for snapshots as real
// guests leave them and as a hostile one can.
func TestPlanSnapLayout(t *testing.T) {
	const n = 512 << 20 / pageSize
	every := func(step, from, to uint64) []pageRun {
		var rs []pageRun
		for p := from; p < to; p += step {
			rs = append(rs, pageRun{p, p + 1})
		}
		return rs
	}
	for _, c := range []struct {
		name           string
		runs           []pageRun
		mapped, copied int
		gapPages       uint64
	}{
		{"empty", nil, 0, 0, 0},
		{"one run", []pageRun{{10, 20}}, 1, 0, 0},
		{"up to the last page", []pageRun{{0, 1}, {n - 70, n}}, 2, 0, 0},
		{"short hole merged", []pageRun{{10, 20}, {36, 40}}, 1, 0, 16},
		{"long hole kept", []pageRun{{10, 20}, {37, 40}}, 2, 0, 0},
		{"shortest holes first", []pageRun{{0, 1}, {17, 18}, {20, 21}, {200, 201}}, 2, 0, 18},
		// 300 pages, one every third: the budget (256 hole pages) merges
		// 128 of them, 172 runs remain, the 31 biggest single pages are
		// mapped beside the merged run, the other 140 copied.
		{"budget spent", every(3, 1000, 1900), 32, 140, 256},
		// A guest that wrote every other page of its RAM before its
		// snapshot: 65,536 runs.
		{"every other page", every(2, 0, n), 32, 65536 - 257 - 31, 256},
		{"scattered", every(4096, 0, n), 32, 0, 0},
		{"too scattered", every(2048, 0, n), 32, 32, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := pageMap(n, c.runs...)
			l := planSnapLayout(m, n)
			checkLayout(t, m, n, l)
			if len(l.mapped) != c.mapped || len(l.copied) != c.copied || l.gapPages != c.gapPages {
				t.Errorf("%d runs mapped, %d copied, %d hole pages mapped; want %d, %d, %d",
					len(l.mapped), len(l.copied), l.gapPages, c.mapped, c.copied, c.gapPages)
			}
		})
	}
}

// FuzzPlanSnapLayout: any page map lays out within the bounds, every
// non-zero page exactly once.
func FuzzPlanSnapLayout(f *testing.F) {
	f.Add([]byte{0xff, 0, 0x55, 0x55, 1}, uint16(4))
	f.Add(bytes.Repeat([]byte{0xaa}, 512), uint16(0))
	f.Fuzz(func(t *testing.T, raw []byte, stretch uint16) {
		// raw's bits, each stretched over 1+stretch%8 pages, so long runs
		// and long holes are as easy to find as short ones.
		k := uint64(1 + stretch%8)
		n := (uint64(len(raw))*8*k + 63) / 64 * 64
		if n == 0 {
			n = 64
		}
		m := make([]uint64, n/64)
		for i := range uint64(len(raw)) * 8 {
			if raw[i/8]>>(i%8)&1 != 0 {
				for p := i * k; p < (i+1)*k; p++ {
					m[p/64] |= 1 << (p % 64)
				}
			}
		}
		checkLayout(t, m, n, planSnapLayout(m, n))
	})
}

// allocated is the memory a memfd holds (its blocks), in bytes.
func allocated(t *testing.T, f *os.File) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestSnapshotHolesAnonymous: a restore of a sealed snapshot memfd whose
// guest touches pages the snapshot did not hold — reads, writes, reads
// after a discard — makes the memfd grow by no more than the holes its
// layout merged (snapGapBudget at most), where a mapping of the whole
// memfd (the restores of b8f8de1) grew it by every page touched; the
// guest reads the snapshot's bytes where it holds some and zero elsewhere;
// the restore adds at most 2*snapMaxMaps+1 mappings, for a page map as
// scattered as a guest can make it.
func TestSnapshotHolesAnonymous(t *testing.T) {
	const size = 64 << 20
	const n = size / pageSize
	// Non-zero: a run of 1 MiB, every other page of [8 MiB, 16 MiB) (1,024
	// runs: some mapped, most copied), three pages 3 apart (merged with
	// their holes), the last page.
	runs := []pageRun{{256, 512}, {6000, 6001}, {6003, 6004}, {6006, 6007}, {n - 1, n}}
	for p := uint64(2048); p < 4096; p += 2 {
		runs = append(runs, pageRun{p, p + 1})
	}
	nonZero := pageMap(n, runs...)
	fd, err := unix.MemfdCreate("kiln-snapshot:test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	want := func(p uint64) []byte {
		if !mapBit(nonZero, p) {
			return make([]byte, pageSize)
		}
		return bytes.Repeat([]byte{byte(p), byte(p >> 8), 0x5a, 0xa5}, pageSize/4)
	}
	for p := range uint64(n) {
		if mapBit(nonZero, p) {
			if _, err := f.WriteAt(want(p), int64(p*pageSize)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, snapSeals); err != nil {
		t.Fatal(err)
	}
	held := allocated(t, f)

	// touch reads every page of b, then writes every page that nonZero
	// says is a hole.
	touch := func(b []byte) {
		var sum byte
		for p := range uint64(n) {
			sum += b[p*pageSize+pageSize/2]
		}
		_ = sum
		for p := range uint64(n) {
			if !mapBit(nonZero, p) {
				b[p*pageSize] = 1
			}
		}
	}

	// The attack, first, so that this test can fail: the whole memfd
	// mapped private, the holes touched, and the memfd grows by all of them.
	whole, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	touch(whole)
	unix.Munmap(whole)
	grown := allocated(t, f) - held
	t.Logf("memfd holding %d KiB: a whole private mapping of it grew it by %d KiB when touched", held>>10, grown>>10)
	if grown < size/2 {
		t.Fatalf("mapping the whole memfd and touching its holes grew it by only %d KiB: the harm this test guards against is not reproduced", grown>>10)
	}

	// The same snapshot in a fresh memfd (the first one now holds its
	// holes), restored as mapSnapshotMemory lays it out.
	fd2, err := unix.MemfdCreate("kiln-snapshot:test2", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	f2 := os.NewFile(uintptr(fd2), "memfd2")
	defer f2.Close()
	f2.Truncate(size)
	for p := range uint64(n) {
		if mapBit(nonZero, p) {
			f2.WriteAt(want(p), int64(p*pageSize))
		}
	}
	unix.FcntlInt(f2.Fd(), unix.F_ADD_SEALS, snapSeals)
	held = allocated(t, f2)
	before := mapCount(t)
	mem, err := mapSnapshotMemory(f2, 0, size, nonZero)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.close()
	l := mem.layout
	maps := mapCount(t) - before
	t.Logf("layout: %d runs mapped (%d hole pages among them), %d copied; %d mappings", len(l.mapped), l.gapPages, len(l.copied), maps)
	if maps > 2*snapMaxMaps+1 {
		t.Errorf("the restore added %d mappings, the bound is %d", maps, 2*snapMaxMaps+1)
	}
	if len(l.copied) == 0 || l.gapPages == 0 {
		t.Errorf("the test's page map should make the layout copy runs and merge holes: %+v", l)
	}
	for p := range uint64(n) {
		if !bytes.Equal(mem.b[p*pageSize:(p+1)*pageSize], want(p)) {
			t.Fatalf("page %d does not read the snapshot's bytes", p)
		}
	}
	touch(mem.b)
	mem.discard(0, size)
	touch(mem.b)
	grown = allocated(t, f2) - held
	t.Logf("restored: the memfd grew by %d KiB when the guest touched every hole (before and after discarding everything)", grown>>10)
	if grown > int64(l.gapPages)*pageSize {
		t.Errorf("the memfd grew by %d KiB, more than the %d KiB of holes the layout maps from it", grown>>10, l.gapPages*pageSize>>10)
	}
	// After the discard every page read zero; touch then wrote a 1 at
	// the start of each hole.
	for p := range uint64(n) {
		w := make([]byte, pageSize)
		if !mapBit(nonZero, p) {
			w[0] = 1
		}
		if !bytes.Equal(mem.b[p*pageSize:(p+1)*pageSize], w) {
			t.Fatalf("page %d (non-zero in the snapshot: %v) reads %x… after the discard and the touch", p, mapBit(nonZero, p), mem.b[p*pageSize:p*pageSize+8])
		}
	}
}
