package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

func putHCIO(t testing.TB, mem *Memory, gpa uint64, a abi.HCIOArgs) {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, &a)
	if err := mem.Write(gpa, b.Bytes()); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeHCIO(t *testing.T) {
	mem, err := newMemory(minMemSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.close()
	const at = 0x500000
	size := mem.Size()
	for _, tc := range []struct {
		name string
		gpa  uint64
		a    abi.HCIOArgs
		want string // "" = accepted
	}{
		{"ok", at, abi.HCIOArgs{OutGPA: 0x600000, OutLen: 10, ErrGPA: 0x600100, ErrLen: 3, InGPA: 0x700000, InCap: 100}, ""},
		{"misaligned", at + 4, abi.HCIOArgs{}, "not 8-byte aligned"},
		{"struct past RAM", size - 8, abi.HCIOArgs{}, "outside guest RAM"},
		{"struct in page tables", 0x1000, abi.HCIOArgs{}, "below the guest's mapped memory"},
		{"out past RAM", at, abi.HCIOArgs{OutGPA: size - 4, OutLen: 5}, "0x7ffffc"},
		{"out wraps", at, abi.HCIOArgs{OutGPA: 0x600000, OutLen: ^uint64(0)}, "HC_IO out"},
		{"err null", at, abi.HCIOArgs{ErrGPA: 0, ErrLen: 1}, "HC_IO err: address 0x0"},
		{"in past RAM", at, abi.HCIOArgs{InGPA: 0x600000, InCap: size}, "HC_IO in"},
		{"flags", at, abi.HCIOArgs{Flags: 0x80}, "unknown flags 0x80"},
	} {
		if tc.gpa%8 == 0 && tc.gpa+hcIOSize <= size {
			putHCIO(t, mem, tc.gpa, tc.a)
		}
		_, _, _, _, bad := decodeHCIO(mem, tc.gpa)
		switch {
		case tc.want == "" && bad != nil:
			t.Errorf("%s: refused: %v", tc.name, bad)
		case tc.want != "" && (bad == nil || !strings.Contains(bad.msg, tc.want)):
			t.Errorf("%s: got %v, want %q", tc.name, bad, tc.want)
		}
	}
}

func putDiscard(t testing.TB, mem *Memory, gpa uint64, a abi.HCDiscardArgs) {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, &a)
	if err := mem.Write(gpa, b.Bytes()); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeHCDiscard(t *testing.T) {
	mem, err := newMemory(minMemSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.close()
	const at = 0x500000
	size := mem.Size()
	one := func(gpa, n uint64) abi.HCDiscardArgs {
		a := abi.HCDiscardArgs{Count: 1}
		a.Ranges[0] = abi.DiscardRange{GPA: gpa, Len: n}
		return a
	}
	two := one(0x600000, 0x1000)
	two.Count = 2
	two.Ranges[1] = abi.DiscardRange{GPA: size - 0x200000, Len: 0x200000}
	for _, tc := range []struct {
		name string
		a    abi.HCDiscardArgs
		want string // "" = accepted
	}{
		{"none", abi.HCDiscardArgs{}, ""},
		{"frame", one(0x600000, 0x200000), ""},
		{"two", two, ""},
		{"count", abi.HCDiscardArgs{Count: abi.DiscardMax + 1}, "at most"},
		{"empty", one(0x600000, 0), "non-empty page-aligned"},
		{"unaligned gpa", one(0x600010, 0x1000), "non-empty page-aligned"},
		{"unaligned len", one(0x600000, 0x10), "non-empty page-aligned"},
		{"kernel", one(0x200000, 0x1000), "below the kernel limit"},
		{"page tables", one(0x1000, 0x1000), "below the kernel limit"},
		{"past RAM", one(size-0x1000, 0x2000), "outside guest RAM"},
		{"wraps", one(0x600000, ^uint64(0)&^0xfff), "outside guest RAM"},
		{"second bad", func() abi.HCDiscardArgs { a := two; a.Ranges[1].GPA = size; return a }(), "HC_DISCARD range 1"},
	} {
		putDiscard(t, mem, at, tc.a)
		_, rs, bad := decodeHCDiscard(mem, at)
		switch {
		case tc.want == "" && bad != nil:
			t.Errorf("%s: refused: %v", tc.name, bad)
		case tc.want == "" && len(rs) != int(tc.a.Count):
			t.Errorf("%s: %d ranges, want %d", tc.name, len(rs), tc.a.Count)
		case tc.want != "" && (bad == nil || !strings.Contains(bad.msg, tc.want)):
			t.Errorf("%s: got %v, want %q", tc.name, bad, tc.want)
		}
	}
}

// TestDiscardZeroes: what the guest relies on — a discarded range of real
// guest memory reads as zero, and the bytes around it are untouched.
func TestDiscardZeroes(t *testing.T) {
	mem, err := newMemory(minMemSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.close()
	vm := &VM{mem: mem, stats: &stats{}}
	s, _ := mem.Slice(0x600000, 0x4000)
	for i := range s {
		s[i] = 0xa5
	}
	a := abi.HCDiscardArgs{Count: 1}
	a.Ranges[0] = abi.DiscardRange{GPA: 0x601000, Len: 0x2000}
	putDiscard(t, mem, 0x500000, a)
	if r := vm.hcDiscard(context.Background(), 0x500000); r != nil {
		t.Fatalf("refused: %s", r.Message)
	}
	for i, b := range s {
		want := byte(0xa5)
		if i >= 0x1000 && i < 0x3000 {
			want = 0
		}
		if b != want {
			t.Fatalf("byte %#x after the discard is %#x, want %#x", 0x600000+i, b, want)
		}
	}
	if st := vm.stats.snapshot(); st.Discards != 1 || st.Discarded != 0x2000 {
		t.Errorf("stats %+v, want 1 discard of 0x2000 bytes", st)
	}
}

// mapCount is the number of mappings of this process (each counts against
// vm.max_map_count).
func mapCount(t testing.TB) int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// TestDiscardRestoredZeroes: on RAM mapped from a snapshot file, every
// other page discarded one hypercall range at a time reads zero — pages
// that are holes in the file and pages the file holds alike — the others
// keep their bytes, and the process gains no mapping (a MAP_FIXED per
// discard once split the mapping until mmap failed with ENOMEM).
func TestDiscardRestoredZeroes(t *testing.T) {
	const size = minMemSize
	f, err := os.CreateTemp(t.TempDir(), "snap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// The file holds pages [6 MiB, 7 MiB) and a lone page at 7.5 MiB; the
	// rest are holes.
	nonZero := make([]uint64, size/pageSize/64)
	held := func(gpa uint64) bool { return gpa >= 6<<20 && gpa < 7<<20 || gpa == 0x780000 }
	for gpa := uint64(0); gpa < size; gpa += pageSize {
		if held(gpa) {
			if _, err := f.WriteAt(bytes.Repeat([]byte{0x11}, pageSize), int64(gpa)); err != nil {
				t.Fatal(err)
			}
			nonZero[gpa/pageSize/64] |= 1 << (gpa / pageSize % 64)
		}
	}
	mem, err := mapSnapshotMemory(f, 0, size, nonZero)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.close()
	vm := &VM{mem: mem, stats: &stats{}}
	const lo, hi = abi.KernelLimit, size
	s, _ := mem.Slice(lo, hi-lo)
	for i := range s {
		s[i] = 0xa5
	}
	before := mapCount(t)
	for gpa := uint64(lo); gpa < hi; gpa += 2 * pageSize {
		a := abi.HCDiscardArgs{Count: 1}
		a.Ranges[0] = abi.DiscardRange{GPA: gpa, Len: pageSize}
		raw, _ := mem.Slice(0x200000, hcDiscSize)
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, &a)
		copy(raw, b.Bytes())
		if r := vm.hcDiscard(context.Background(), 0x200000); r != nil {
			t.Fatalf("discard at %#x refused: %s", gpa, r.Message)
		}
	}
	// One range over everything from 7 MiB: runs of holes and held pages.
	a := abi.HCDiscardArgs{Count: 1}
	a.Ranges[0] = abi.DiscardRange{GPA: 7 << 20, Len: hi - 7<<20}
	putDiscard(t, mem, 0x200000, a)
	if r := vm.hcDiscard(context.Background(), 0x200000); r != nil {
		t.Fatalf("refused: %s", r.Message)
	}
	if after := mapCount(t); after > before+2 {
		t.Errorf("%d discards took the process from %d to %d mappings", (hi-lo)/pageSize/2, before, after)
	}
	// What was a hole went back to the host; a held page stays as a zeroed
	// private copy: of the 4 MiB written, [6 MiB, 7 MiB), 0x780000 and
	// every other page of [4 MiB, 6 MiB) are left (and the argument page).
	if rss, want := mappingRSS(t, mem.b), uint64(2<<20+2*pageSize); rss != want {
		t.Errorf("the mapping's RSS is %d KiB after the discards (before any read), want %d KiB", rss>>10, want>>10)
	}
	for gpa := uint64(lo); gpa < hi; gpa += pageSize {
		want := byte(0xa5)
		if (gpa-lo)/pageSize%2 == 0 || gpa >= 7<<20 {
			want = 0
		}
		pg, _ := mem.Slice(gpa, pageSize)
		for i, b := range pg {
			if b != want {
				t.Fatalf("byte %#x is %#x, want %#x (held in the file: %v)", gpa+uint64(i), b, want, held(gpa))
			}
		}
	}
}

// mappingRSS is the resident size of guest RAM b: its pages the process
// has mapped, or the file behind them holds (mincore). Restored, b is
// several host mappings, the first and last of which can merge with a
// neighbour, so smaps' per-mapping totals would count more than b.
func mappingRSS(t testing.TB, b []byte) uint64 {
	v, err := residentPages(b)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, in := range v {
		n += uint64(in & 1)
	}
	return n * pageSize
}

func TestDoorbellAndPort(t *testing.T) {
	gpa := []byte{0x00, 0x10, 0x50, 0, 0, 0, 0, 0}
	if nr, g, bad := doorbell(abi.HCMMIOBase+8*abi.HCIO, gpa, true); bad != nil || nr != abi.HCIO || g != 0x501000 {
		t.Errorf("HC_IO doorbell: %d %#x %v", nr, g, bad)
	}
	for name, c := range map[string]struct {
		phys  uint64
		data  []byte
		write bool
		want  string
	}{
		"read":      {abi.HCMMIOBase + 8, gpa, false, "write-only"},
		"nr 0":      {abi.HCMMIOBase, gpa, true, "unknown hypercall number 0"},
		"nr 99":     {abi.HCMMIOBase + 8*99, gpa, true, "unknown hypercall number 99"},
		"unaligned": {abi.HCMMIOBase + 9, gpa[:4], true, "aligned 8-byte"},
		"short":     {abi.HCMMIOBase + 8, gpa[:4], true, "aligned 8-byte"},
		"elsewhere": {0x40000000, gpa, true, "not guest RAM"},
	} {
		if _, _, bad := doorbell(c.phys, c.data, c.write); bad == nil || !strings.Contains(bad.msg, c.want) {
			t.Errorf("%s: %v, want %q", name, bad, c.want)
		}
	}
	if nr, g, bad := portCall(abi.HCPIOBase+abi.HCExit, true, 4, 1, gpa[:4]); bad != nil || nr != abi.HCExit || g != 0x501000 {
		t.Errorf("HC_EXIT port: %d %#x %v", nr, g, bad)
	}
	for name, c := range map[string]struct {
		port  uint16
		out   bool
		size  uint8
		count uint32
	}{
		"in": {abi.HCPIOBase + 1, false, 4, 1}, "byte": {abi.HCPIOBase + 1, true, 1, 1},
		"rep": {abi.HCPIOBase + 1, true, 4, 2}, "base": {abi.HCPIOBase, true, 4, 1}, "0x80": {0x80, true, 4, 1},
	} {
		if _, _, bad := portCall(c.port, c.out, c.size, c.count, gpa[:4]); bad == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestTSCDeadline(t *testing.T) {
	boot := time.Unix(1000, 0)
	const khz = 2_000_000 // 2 GHz
	if got := tscDeadline(5000+2_000_000_000, 5000, khz, boot); !got.Equal(boot.Add(time.Second)) {
		t.Errorf("one second of ticks → %v", got.Sub(boot))
	}
	if got := tscDeadline(10, 5000, khz, boot); !got.Equal(boot) {
		t.Errorf("past deadline → %v", got.Sub(boot))
	}
	if got := tscDeadline(^uint64(0), 0, 1, boot); got.Sub(boot) < 50*365*24*time.Hour {
		t.Errorf("absurd deadline should saturate far in the future, got %v", got.Sub(boot))
	}
}

func TestInputPump(t *testing.T) {
	p := newInputPump(strings.NewReader("hello world"))
	ctx := context.Background()
	buf := make([]byte, 5)
	var got []byte
	for i := 0; i < 10; i++ {
		n, eof, err := p.read(ctx, buf, true, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
		if eof {
			break
		}
	}
	if string(got) != "hello world" {
		t.Errorf("read %q", got)
	}
	// A reader that never delivers: the deadline ends the wait.
	pr := newInputPump(blockingReader{})
	start := time.Now()
	n, eof, err := pr.read(ctx, buf, true, time.Now().Add(50*time.Millisecond))
	if n != 0 || eof || err != nil || time.Since(start) < 40*time.Millisecond {
		t.Errorf("deadline wait: n %d eof %v err %v after %v", n, eof, err, time.Since(start))
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := pr.read(cctx, buf, true, time.Time{}); err == nil {
		t.Error("a cancelled context did not end the wait")
	}
	pr.stop()
}

type blockingReader struct{}

func (blockingReader) Read([]byte) (int, error) { select {} }

// FuzzHypercall: any bytes as a hypercall argument struct, at any address,
// are either refused with a message or yield slices inside guest RAM, and
// an accepted discard is served. The bytes are placed where the fuzzer
// points (gpa, wrapped into RAM: the struct is really there whenever gpa
// is inside RAM, crossing its end when it is near it), so the decoders see
// the fuzzer's struct at every alignment and offset, not only at one
// address.
func FuzzHypercall(f *testing.F) {
	mem, err := newMemory(minMemSize)
	if err != nil {
		f.Fatal(err)
	}
	// Its discards run on a clock that stands still: over budget they
	// "wait" no time (TestDiscardBudget tests the wait).
	vm := &VM{mem: mem, stats: &stats{}, now: func() time.Time { return time.Unix(0, 0) },
		sleep: func(context.Context, time.Time) error { return nil }}
	f.Add(uint64(0x500000), make([]byte, hcExitSize))
	f.Add(uint64(0x500004), make([]byte, hcExitSize))
	f.Add(^uint64(0)-7, []byte{1, 2, 3})
	var seed bytes.Buffer
	binary.Write(&seed, binary.LittleEndian, &abi.HCIOArgs{OutGPA: 0x600000, OutLen: 16, InGPA: 0x7ff0000, InCap: 0x10000})
	f.Add(uint64(0x500000), seed.Bytes())
	disc := abi.HCDiscardArgs{Count: 2}
	disc.Ranges[0] = abi.DiscardRange{GPA: 0x600000, Len: 0x200000}
	disc.Ranges[1] = abi.DiscardRange{GPA: 0x7ff000, Len: 0x1000}
	seed.Reset()
	binary.Write(&seed, binary.LittleEndian, &disc)
	f.Add(uint64(0x500000), seed.Bytes())
	disc.Ranges[1] = abi.DiscardRange{GPA: 0x3ff000, Len: 0x1000}
	seed.Reset()
	binary.Write(&seed, binary.LittleEndian, &disc)
	f.Add(uint64(0x500000), seed.Bytes())
	f.Add(uint64(0x7fffe0), make([]byte, hcIOSize)) // crosses the end of RAM
	f.Add(uint64(0x400ff8), seed.Bytes())
	f.Fuzz(func(t *testing.T, gpa uint64, raw []byte) {
		at := gpa % mem.Size()
		placed := mem.b[at:][:min(uint64(len(raw)), mem.Size()-at)]
		copy(placed, raw)
		defer clear(placed) // each input starts from zero RAM
		inRAM := func(b []byte) {
			if len(b) == 0 {
				return
			}
			lo := hostAddrOf(mem, b)
			if lo < firstMapped || lo+uint64(len(b)) > mem.Size() {
				t.Fatalf("slice [%#x, +%#x) escapes guest RAM", lo, len(b))
			}
		}
		if _, out, errb, in, bad := decodeHCIO(mem, gpa); bad == nil {
			inRAM(out)
			inRAM(errb)
			inRAM(in)
		} else if bad.msg == "" {
			t.Fatal("refusal without a message")
		}
		if _, out, errb, bad := decodeHCExit(mem, gpa); bad == nil {
			inRAM(out)
			inRAM(errb)
		}
		if _, rs, bad := decodeHCDiscard(mem, gpa); bad == nil {
			for _, r := range rs {
				inRAM(r)
				if lo := hostAddrOf(mem, r); lo < abi.KernelLimit || lo%pageSize != 0 || len(r)%pageSize != 0 || len(r) == 0 {
					t.Fatalf("discard range [%#x, +%#x) accepted", lo, len(r))
				}
			}
			if r := vm.hcDiscard(context.Background(), gpa); r != nil {
				t.Fatalf("accepted discard ended the VM: %s", r.Message)
			}
		}
		var d [8]byte
		copy(d[:], raw)
		doorbell(gpa, d[:min(len(raw), 8)], len(raw)%2 == 0)
	})
}

// hostAddrOf is b's offset in guest RAM (b must be a sub-slice of it).
func hostAddrOf(m *Memory, b []byte) uint64 {
	return hostAddr(b) - hostAddr(m.b)
}
