package vmm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// TestSnapshotSealed: a snapshot file written to after it was opened — in
// a page the snapshot holds and in a hole — changes nothing a restore maps,
// neither a mapping made before the write (a running VM) nor one made after
// (a new restore), although a MAP_PRIVATE mapping of the file itself shows
// the write (the attack, checked first so that this test can fail). The
// copy cannot be written, and a process handed it (OpenSnapshotFile) maps
// it without copying it again.
func TestSnapshotSealed(t *testing.T) {
	seed := newSnapSeed(t)
	path := filepath.Join(t.TempDir(), "fn.snap")
	seed.write(t, path).Close()
	snap, err := OpenSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	h := snap.hdr
	restore := func() *Memory {
		m, err := mapSnapshotMemory(snap.f, h.MemOff, h.MemSize, snap.nonZero)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.close)
		return m
	}
	running := restore()
	kernel := bytes.Clone(running.b[abi.KernelBase : abi.KernelBase+pageSize])
	hole := uint64(abi.KernelBase + 8*pageSize)
	if snap.nonZero[hole/pageSize/64]>>(hole/pageSize%64)&1 != 0 || !bytes.Equal(running.b[hole:hole+pageSize], make([]byte, pageSize)) {
		t.Fatal("the seed has data where the test expects a hole")
	}

	// The attacker: a writer of the file, after it was opened.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	direct, err := unix.Mmap(int(f.Fd()), int64(h.MemOff), int(h.MemSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(direct)
	_ = direct[abi.KernelBase] // touched, not written: still the file's page
	evil := bytes.Repeat([]byte{0xcc}, pageSize)
	for _, gpa := range []uint64{abi.KernelBase, hole} {
		if _, err := f.WriteAt(evil, int64(h.MemOff+gpa)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(direct[abi.KernelBase:abi.KernelBase+pageSize], evil) {
		t.Fatal("a private mapping of the file did not see the write: the attack this test guards against is not reproduced")
	}

	later := restore()
	for name, m := range map[string]*Memory{"running": running, "new restore": later} {
		if !bytes.Equal(m.b[abi.KernelBase:abi.KernelBase+pageSize], kernel) {
			t.Errorf("%s: a page the snapshot holds shows the write", name)
		}
		if !bytes.Equal(m.b[hole:hole+pageSize], make([]byte, pageSize)) {
			t.Errorf("%s: a hole of the snapshot shows the write", name)
		}
		// A discard of a hole reads the copy again: still zero.
		m.discard(hole, pageSize)
		if !bytes.Equal(m.b[hole:hole+pageSize], make([]byte, pageSize)) {
			t.Errorf("%s: a discarded hole shows the write", name)
		}
	}

	// The copy itself cannot be changed by anyone holding it.
	if _, err := snap.File().WriteAt([]byte{1}, int64(h.MemOff+abi.KernelBase)); !errors.Is(err, syscall.EPERM) {
		t.Errorf("writing the sealed copy: %v, want EPERM", err)
	}
	if err := snap.File().Truncate(0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncating the sealed copy: %v, want EPERM", err)
	}
	if _, err := unix.Mmap(int(snap.File().Fd()), 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); !errors.Is(err, syscall.EPERM) {
		t.Errorf("a shared writable mapping of the sealed copy: %v, want EPERM", err)
	}

	// Handed over, it is used as it is: the same memfd, not a new copy.
	again, err := OpenSnapshotFile(snap.File())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	var a, b unix.Stat_t
	unix.Fstat(int(snap.File().Fd()), &a)
	unix.Fstat(int(again.File().Fd()), &b)
	if a.Ino != b.Ino || a.Dev != b.Dev {
		t.Error("OpenSnapshotFile copied a memfd that was already sealed")
	}
	// The file, now changed, is refused when opened again.
	if _, err := OpenSnapshot(path); !errors.Is(err, ErrSnapshot) {
		t.Errorf("reopening the changed file: %v, want ErrSnapshot", err)
	}
}
