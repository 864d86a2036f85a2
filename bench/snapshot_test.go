package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/proto/wire"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// firstByte is a stdout that records when its first byte arrived.
type firstByte struct {
	once sync.Once
	at   chan time.Time
}

func newFirstByte() *firstByte { return &firstByte{at: make(chan time.Time, 1)} }

func (f *firstByte) Write(p []byte) (int, error) {
	if len(p) > 0 {
		f.once.Do(func() { f.at <- time.Now() })
	}
	return len(p), nil
}

// requestFrame is one wire request frame, as the agent would send it.
func requestFrame(t *testing.T) []byte {
	var b bytes.Buffer
	if err := wire.WriteRequest(&b, &wire.Request{ID: 1, Method: "POST", Path: "/", Body: []byte("world")}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// vmFirstByte creates a VM from cfg with one request waiting on its stdin
// and times creation → the first byte of its response.
func vmFirstByte(t *testing.T, cfg vmm.Config, frame []byte) time.Duration {
	t.Helper()
	out := newFirstByte()
	cfg.Stdin, cfg.Stdout = bytes.NewReader(frame), out
	start := time.Now()
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := vm.Run(ctx); err != nil {
		t.Fatalf("run: %v", err)
	}
	select {
	case at := <-out.at:
		return at.Sub(start)
	default:
		t.Fatal("the VM wrote no response")
		return 0
	}
}

// TestSnapshotReport: restore → first response byte for hello-go, beside
// boot → first response byte and a native fork/exec of the same binary to
// its first response byte, in one run. KILN_BENCH=1 (make bench).
func TestSnapshotReport(t *testing.T) {
	if os.Getenv("KILN_BENCH") != "1" {
		t.Skip("measurement: set KILN_BENCH=1 (make bench)")
	}
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	path := filepath.Join(kvmtest.BuildDir(t), "examples/hello-go/hello-go")
	prog := kvmtest.Artifact(t, "examples/hello-go/hello-go")
	frame := requestFrame(t)
	n := runs()
	cfg := vmm.Config{Kernel: kernel, Program: prog, Args: []string{"hello-go"}}

	snapPath := filepath.Join(t.TempDir(), "hello-go.snap")
	sc := cfg
	sc.SnapshotPath = snapPath
	var snapErr error
	sc.OnSnapshot = func(err error) { snapErr = err }
	take := vmFirstByte(t, sc, frame)
	if snapErr != nil {
		t.Fatal(snapErr)
	}
	openStart := time.Now()
	snap, err := vmm.OpenSnapshot(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	open := time.Since(openStart)
	defer snap.Close()
	st, _ := os.Stat(snapPath)

	fmt.Fprintln(os.Stderr, "bench: snapshot restores")
	var restore, boot, native []time.Duration
	for i := 0; i < n; i++ {
		rc := cfg
		rc.Snapshot = snap
		restore = append(restore, vmFirstByte(t, rc, frame))
	}
	fmt.Fprintln(os.Stderr, "bench: boots")
	for i := 0; i < n; i++ {
		boot = append(boot, vmFirstByte(t, cfg, frame))
	}
	fmt.Fprintln(os.Stderr, "bench: native")
	for i := 0; i < n; i++ {
		native = append(native, nativeFirstByte(t, path, frame))
	}

	fmt.Printf("\n== Snapshots: hello-go, 64 MiB (%d runs each; medians) ==\n", n)
	fmt.Printf("%-56s %12v\n", "boot → first response byte, taking the snapshot", take)
	fmt.Printf("%-56s %12v\n", "OpenSnapshot (read + verify the file, once)", open)
	fmt.Printf("%-56s %12d KiB (%d MiB apparent)\n", "snapshot file, allocated", snap.Pages()*4, st.Size()>>20)
	fmt.Printf("%-56s %12v\n", "restore → first response byte (VM create included)", median(restore))
	fmt.Printf("%-56s %12v\n", "boot → first response byte", median(boot))
	fmt.Printf("%-56s %12v\n", "native fork/exec → first response byte", median(native))
	fmt.Printf("%-56s %12.1fx\n", "ratio: boot / restore", float64(median(boot))/float64(median(restore)))
	fmt.Printf("%-56s %12.1fx\n", "ratio: restore / native", float64(median(restore))/float64(median(native)))
}
