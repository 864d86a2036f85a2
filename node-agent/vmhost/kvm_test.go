package vmhost

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/proto/wire"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// The real hello-go through a Host: boot in a worker taking the snapshot,
// answer a request, then restores of that snapshot in workers answering
// too. Needs /dev/kvm (scripts/kvmtests runs it in kvmbox).
func TestKVMHelloGoBootAndRestore(t *testing.T) {
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	prog := kvmtest.Artifact(t, "examples/hello-go/hello-go")
	h := newHost(t, Config{PerWorker: 1, MaxWorkers: 2})
	snapPath := filepath.Join(t.TempDir(), "hello-go.snap")

	// serve boots or restores cfg, sends one request through real pipes
	// and returns the answer.
	serve := func(cfg vmm.Config, id uint64, body string) *wire.Response {
		t.Helper()
		inR, inW, _ := os.Pipe()
		outR, outW, _ := os.Pipe()
		defer inR.Close()
		defer inW.Close()
		defer outR.Close()
		var stderr bytes.Buffer
		cfg.Stdin, cfg.Stdout, cfg.Stderr = inR, outW, &stderr
		waited := make(chan struct{})
		cfg.OnFirstWait = func() { close(waited) }
		v, err := h.Boot(cfg)
		outW.Close()
		if err != nil {
			t.Fatalf("boot: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		done := make(chan error, 1)
		var res *vmm.Result
		go func() {
			var err error
			res, err = v.Run(ctx)
			done <- err
		}()
		if err := wire.WriteRequest(inW, &wire.Request{ID: id, Method: "POST", Path: "/", Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
		resp, err := wire.ReadResponse(outR, 0)
		if err != nil {
			v.Close()
			<-done
			t.Fatalf("response: %v (result %+v, stderr %q)", err, res, stderr.String())
		}
		select {
		case <-waited:
		default:
			t.Fatal("answered without OnFirstWait")
		}
		s := v.Stats()
		if s.InputWaits == 0 || s.Exits == 0 {
			t.Fatalf("stats %+v", s)
		}
		if !v.shared.Load() {
			t.Fatal("the VM's counters are not in the memory shared with its worker: Stats asked")
		}
		v.Close() // a serve function waits for its next request: Close ends it
		if err := <-done; res.Reason != vmm.ReasonTimeout {
			t.Fatalf("after Close: %+v, %v", res, err)
		}
		if res.Stats.Exits < s.Exits || res.Stats.InputWaits < s.InputWaits {
			t.Fatalf("counters read from shared memory %+v ahead of the final ones %+v", s, res.Stats)
		}
		return resp
	}

	cfg := vmm.Config{Kernel: kernel, Program: prog, Args: []string{"hello-go"}}
	bc := cfg
	bc.SnapshotPath = snapPath
	snapped := make(chan error, 1)
	bc.OnSnapshot = func(err error) { snapped <- err }
	r := serve(bc, 1, "kiln")
	if r.ID != 1 || r.Status != 200 || string(r.Body) != "hello, kiln" {
		t.Fatalf("boot answered %+v", r)
	}
	select {
	case err := <-snapped:
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
	default:
		t.Fatal("OnSnapshot never ran")
	}

	snap, err := vmm.OpenSnapshot(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	if err := snap.Matches(cfg); err != nil {
		t.Fatal(err)
	}
	for i, who := range []string{"again", "and again", "once more"} {
		rc := cfg
		rc.Snapshot = snap
		start := time.Now()
		r := serve(rc, uint64(2+i), who)
		if r.ID != uint64(2+i) || r.Status != 200 || string(r.Body) != "hello, "+who {
			t.Fatalf("restore %d answered %+v", i, r)
		}
		t.Logf("restore %d in a worker → answer: %v", i, time.Since(start))
	}
}
