package nodeagent

import (
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/image"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// These boot real unikernels with the production Booter (BootVM): the
// kernel and guests built by `make build-guest`.

func kvmHarness(t *testing.T) (*harness, []byte) {
	t.Helper()
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	return newHarness(t, 1<<30, BootVM), kernel
}

func TestKVMExecCat(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "cat", image.KindExec, kernel, kvmtest.Artifact(t, "guests/cat"), 10*time.Second)
	body := strings.Repeat("kiln ", 20000) // 100 KB: more than one input exit
	r := h.invoke(t, "cat", d, "/", body)
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if string(r.Body) != body || r.VmExits == 0 || r.StartNs <= 0 || r.ExecNs <= 0 {
		t.Fatalf("cat: %d bytes back, exits %d, start %d ns, exec %d ns", len(r.Body), r.VmExits, r.StartNs, r.ExecNs)
	}
	t.Logf("exec cat: boot %.2f ms, exec %.2f ms, %d exits", float64(r.StartNs)/1e6, float64(r.ExecNs)/1e6, r.VmExits)
	if c := h.a.capacity(); c.MemoryBytesUsed != 0 {
		t.Fatalf("memory not returned: %v", c)
	}
}

func TestKVMExecTimeout(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "spin", image.KindExec, kernel, kvmtest.Artifact(t, "vmmguests/spin"), 500*time.Millisecond)
	t0 := time.Now()
	r := h.invoke(t, "spin", d, "/", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, kilnv1.StartKind_START_BOOT)
	if el := time.Since(t0); el > 10*time.Second {
		t.Fatalf("a 500 ms timeout took %v", el)
	}
}

func TestKVMServeHello(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "hello", image.KindServe, kernel, kvmtest.Artifact(t, "examples/hello-c/hello"), 10*time.Second)
	r := h.invoke(t, "hello", d, "/", "kiln")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if r.Status != 200 || string(r.Body) != "hello, kiln" || r.StartNs <= 0 {
		t.Fatalf("first: %+v", r)
	}
	t.Logf("serve hello boot: start %.2f ms, exec %.2f ms, %d exits", float64(r.StartNs)/1e6, float64(r.ExecNs)/1e6, r.VmExits)
	for i := 0; i < 5; i++ {
		r = h.invoke(t, "hello", d, "/", "again")
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
		if string(r.Body) != "hello, again" || r.StartNs != 0 || r.VmExits == 0 {
			t.Fatalf("warm: %+v", r)
		}
	}
	t.Logf("serve hello warm: exec %.3f ms, %d exits", float64(r.ExecNs)/1e6, r.VmExits)
	if c := h.a.capacity(); len(c.Warm) != 1 || c.Warm[0].Idle != 1 || c.MemoryBytesUsed != 64<<20 {
		t.Fatalf("capacity: %v", c)
	}
}
