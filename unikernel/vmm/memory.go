package vmm

import (
	"fmt"
	"math/bits"
	"os"
	"sort"

	"github.com/kilnfaas/kiln/unikernel/abi"
	"golang.org/x/sys/unix"
)

// Memory is the guest's RAM: one host address range at guest physical
// address 0, anonymous (private, zero-filled) — for a restored guest with
// the runs of pages its snapshot holds mapped over it, private and
// copy-on-write, from the snapshot's sealed memfd (mapSnapshotMemory).
// Fresh pages are zero and cost the host nothing until touched.
//
// The host mappings are made once, when the memory is, and their number is
// bounded (one for a booted guest, at most 2*snapMaxMaps+1 for a restored
// one, whatever its snapshot): no discard, however many and however small,
// adds one (each would count against the worker's vm.max_map_count, shared
// by every VM of the worker).
type Memory struct {
	b []byte
	// snapNonZero, for a restored guest, has bit i set when page i of the
	// snapshot is not zero (Snapshot.nonZero, shared by its restores, read
	// only). nil for a booted guest.
	snapNonZero []uint64
	// layout, for a restored guest, is how its snapshot was laid out.
	layout snapLayout
}

// checkMemSize validates a requested guest RAM size.
func checkMemSize(size uint64) error {
	switch {
	case size < minMemSize:
		return fmt.Errorf("%w: %d bytes, the minimum is %d", ErrMemSize, size, minMemSize)
	case size%abi.MemAlign != 0:
		return fmt.Errorf("%w: %d bytes is not a multiple of 2 MiB", ErrMemSize, size)
	case size > abi.MemMax:
		return fmt.Errorf("%w: %d bytes is above the maximum %d", ErrMemSize, size, uint64(abi.MemMax))
	}
	return nil
}

// newMemory maps size bytes of guest RAM for a booted guest: anonMemory,
// and MADV_HUGEPAGE lets the host back the guest's 2 MiB pages with huge
// pages.
func newMemory(size uint64) (*Memory, error) {
	m, err := anonMemory(size)
	if err != nil {
		return nil, err
	}
	_ = unix.Madvise(m.b, unix.MADV_HUGEPAGE) // advice only; fine if THP is off
	return m, nil
}

// anonMemory maps size bytes of anonymous guest RAM. MAP_NORESERVE: the
// host pays only for pages the guest (or the loader) touches.
func anonMemory(size uint64) (*Memory, error) {
	if err := checkMemSize(size); err != nil {
		return nil, err
	}
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of guest memory: %w", size, err)
	}
	return &Memory{b: b}, nil
}

// mapSnapshotMemory maps size bytes of the snapshot f holds at off as guest
// RAM: anonymous memory, with the runs of pages the snapshot holds
// (nonZero) mapped over it from f, private and copy-on-write, so that
// restores of one snapshot share its pages and pay only for the ones they
// write.
//
// The snapshot's holes are not mapped from f: on shmem (the sealed memfd
// restores map) any fault on a hole, read or write, allocates a page in
// the file — unreclaimable, charged to the faulting process, kept while
// the file lives — and a write then makes the private copy too, so a
// restored guest touching memory its snapshot did not hold cost twice, and
// the memfd grew toward the whole RAM size. Anonymous holes cost what they
// cost a booted guest. Which runs are mapped, merged or copied instead is
// planSnapLayout's choice: the number of host mappings stays bounded
// whatever the snapshot (its pages are the guest's choice). No huge pages
// (MADV_NOHUGEPAGE, which matters where THP is "always", as in the QEMU
// box), as when restored RAM was all a file mapping: a restored guest pays
// 4 KiB per page it touches, not 2 MiB, so idle restored instances stay
// as dense as they were.
func mapSnapshotMemory(f *os.File, off, size uint64, nonZero []uint64) (*Memory, error) {
	m, err := anonMemory(size)
	if err != nil {
		return nil, err
	}
	_ = unix.Madvise(m.b, unix.MADV_NOHUGEPAGE) // advice only; fine if THP is off
	m.snapNonZero = nonZero
	m.layout = planSnapLayout(nonZero, size/pageSize)
	fd := int(f.Fd())
	for _, r := range m.layout.mapped {
		b := m.b[r.start*pageSize : r.end*pageSize]
		if err := mapFileAt(b, fd, int64(off+r.start*pageSize)); err != nil {
			m.close()
			return nil, fmt.Errorf("mmap %d bytes of snapshot memory at %#x: %w", len(b), r.start*pageSize, err)
		}
	}
	for _, r := range m.layout.copied {
		b := m.b[r.start*pageSize : r.end*pageSize]
		if _, err := f.ReadAt(b, int64(off+r.start*pageSize)); err != nil {
			m.close()
			return nil, fmt.Errorf("read %d bytes of snapshot memory at %#x: %w", len(b), r.start*pageSize, err)
		}
	}
	return m, nil
}

// Bounds of a restored guest's layout (planSnapLayout).
const (
	// snapMaxMaps is the most runs of a snapshot a restore maps from its
	// memfd: with the anonymous pieces around them, at most
	// 2*snapMaxMaps+1 = 65 host mappings per restored VM, 16,640 for the
	// 256 VMs of a full worker (vm.max_map_count is 65,530 by default).
	snapMaxMaps = 32
	// snapMaxGap is the longest hole between two runs that is mapped from
	// the memfd with them, merging them into one mapping, in pages.
	snapMaxGap = 16
	// snapGapBudget is how many pages of holes a restore maps from the
	// memfd at most: the most the memfd can grow by, ever, when restored
	// guests touch them (1 MiB). Found by measuring real snapshots
	// (TestSnapshotLayouts, docs/BENCHMARKS.md).
	snapGapBudget = 256
)

// pageRun is the guest pages [start, end), as page numbers.
type pageRun struct{ start, end uint64 }

func (r pageRun) pages() uint64 { return r.end - r.start }

// snapLayout is how a restore lays out a snapshot's pages over anonymous
// RAM: mapped from the memfd (runs of non-zero pages, some merged with the
// holes between them), or copied (read into the anonymous RAM: the runs
// past snapMaxMaps, private to each restore as if the guest had written
// them).
type snapLayout struct {
	mapped, copied []pageRun
	gapPages       uint64 // holes inside mapped: pages of the memfd a guest can make it allocate
	runs           int    // runs of non-zero pages in the snapshot
}

// planSnapLayout lays out a snapshot whose non-zero pages are nonZero's
// set bits (of n pages). It merges the runs separated by the shortest
// holes first, each up to snapMaxGap pages, all up to snapGapBudget; if
// more than snapMaxMaps runs remain, the ones holding the most pages are
// mapped and the others copied. Copying costs the restore time and the
// pages a private copy, but only a snapshot of memory scattered in more
// than snapMaxMaps places pays it, and a copy is at most what the guest
// would have paid by writing the page.
func planSnapLayout(nonZero []uint64, n uint64) snapLayout {
	var runs []pageRun
	for p := uint64(0); p < n; {
		w := nonZero[p/64] >> (p % 64)
		if w == 0 {
			p += 64 - p%64
			continue
		}
		p += uint64(bits.TrailingZeros64(w))
		if p >= n {
			break
		}
		start := p
		for p < n {
			w := ^nonZero[p/64] >> (p % 64)
			if w == 0 {
				p += 64 - p%64
				continue
			}
			p += uint64(bits.TrailingZeros64(w))
			break
		}
		p = min(p, n)
		runs = append(runs, pageRun{start, p})
	}
	if len(runs) == 0 {
		return snapLayout{}
	}
	l := snapLayout{runs: len(runs)}
	// Merge across the shortest holes first.
	gaps := make([]int, len(runs)-1) // gap i lies between runs i and i+1
	for i := range gaps {
		gaps[i] = i
	}
	gap := func(i int) uint64 { return runs[i+1].start - runs[i].end }
	sort.SliceStable(gaps, func(a, b int) bool { return gap(gaps[a]) < gap(gaps[b]) })
	merge := make([]bool, len(runs)-1)
	for _, i := range gaps {
		g := gap(i)
		if g > snapMaxGap || l.gapPages+g > snapGapBudget {
			break
		}
		merge[i] = true
		l.gapPages += g
	}
	type group struct {
		span  pageRun
		held  uint64 // non-zero pages
		first int    // its runs: runs[first:last+1]
		last  int
	}
	var groups []group
	for i, r := range runs {
		if i > 0 && merge[i-1] {
			g := &groups[len(groups)-1]
			g.span.end, g.held, g.last = r.end, g.held+r.pages(), i
			continue
		}
		groups = append(groups, group{span: r, held: r.pages(), first: i, last: i})
	}
	keep := make([]bool, len(groups))
	if len(groups) <= snapMaxMaps {
		for i := range keep {
			keep[i] = true
		}
	} else {
		order := make([]int, len(groups))
		for i := range order {
			order[i] = i
		}
		sort.SliceStable(order, func(a, b int) bool { return groups[order[a]].held > groups[order[b]].held })
		for _, i := range order[:snapMaxMaps] {
			keep[i] = true
		}
	}
	l.gapPages = 0
	for i, g := range groups {
		if keep[i] {
			l.mapped = append(l.mapped, g.span)
			l.gapPages += g.span.pages() - g.held
			continue
		}
		l.copied = append(l.copied, runs[g.first:g.last+1]...)
	}
	return l
}

// discard gives the host the pages behind guest RAM [gpa, gpa+n) back
// (page-aligned and inside RAM: the caller checked); the guest reads zeros
// there afterwards. It never fails and never adds a host mapping.
//
// Booted RAM is anonymous: MADV_DONTNEED frees the pages and the next touch
// reads fresh zero pages. So is most of restored RAM: its holes, and runs
// of the snapshot copied in. The rest is mapped from the snapshot's memfd,
// where MADV_DONTNEED drops the guest's private copies and the pages read
// the memfd again: right for a page that is zero in the snapshot (a hole
// merged into a mapped run: it reads the memfd's hole, zero), wrong for
// one that is not, which is zeroed in place instead, wherever it lives
// (one private page stays behind; there are at most Snapshot.Pages of
// them).
// One madvise or clear per run of pages alike, so a discard costs a
// syscall or two whatever its length. It returns the madvise calls made
// (the discard budget counts them).
func (m *Memory) discard(gpa, n uint64) int {
	if m.snapNonZero == nil {
		dontNeed(m.b[gpa : gpa+n])
		return 1
	}
	calls := 0
	for p, end := gpa, gpa+n; p < end; {
		nz := m.snapPage(p)
		q := m.snapRun(p+pageSize, end, nz)
		if nz {
			clear(m.b[p:q])
		} else {
			dontNeed(m.b[p:q])
			calls++
		}
		p = q
	}
	return calls
}

// snapPage says whether the page at gpa is non-zero in the snapshot.
func (m *Memory) snapPage(gpa uint64) bool {
	i := gpa / pageSize
	return m.snapNonZero[i/64]>>(i%64)&1 != 0
}

// snapRun returns the end of the run of pages from p (before end) whose
// snapshot bit is nz, skipping whole bitmap words where it can.
func (m *Memory) snapRun(p, end uint64, nz bool) uint64 {
	var same uint64 // a bitmap word of 64 pages all of the run's kind
	if nz {
		same = ^uint64(0)
	}
	for p < end {
		i := p / pageSize
		if i%64 == 0 && end-p >= 64*pageSize && m.snapNonZero[i/64] == same {
			p += 64 * pageSize
			continue
		}
		if m.snapPage(p) != nz {
			return p
		}
		p += pageSize
	}
	return end
}

// dontNeed frees the host pages behind b. Should the kernel refuse (it does
// not for the mappings Memory makes), zeroing in place keeps the promise
// the guest relies on at the cost of keeping the pages.
func dontNeed(b []byte) {
	if unix.Madvise(b, unix.MADV_DONTNEED) != nil {
		clear(b)
	}
}

// Size is the guest RAM size in bytes.
func (m *Memory) Size() uint64 { return uint64(len(m.b)) }

// Slice returns guest memory [gpa, gpa+n) or an error if any byte of it is
// outside guest RAM (overflow included). Every guest address the VMM uses
// goes through here; the caller decides whether a bad one ends the VM (a
// hypercall) or refuses the boot (the loader).
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	size := uint64(len(m.b))
	if gpa > size || n > size-gpa {
		return nil, fmt.Errorf("guest range [%#x, +%#x) is outside guest RAM (%#x bytes)", gpa, n, size)
	}
	return m.b[gpa : gpa+n : gpa+n], nil
}

// Write copies p to guest address gpa.
func (m *Memory) Write(gpa uint64, p []byte) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}

func (m *Memory) close() {
	if m.b != nil {
		_ = unix.Munmap(m.b)
		m.b = nil
	}
}
