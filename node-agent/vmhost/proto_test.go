package vmhost

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

func TestErrorWire(t *testing.T) {
	orig := fmt.Errorf("vmm: restore: %w: open x: %w", vmm.ErrSnapshot, fs.ErrNotExist)
	got := decodeErr(encodeErr(orig))
	if got.Error() != orig.Error() || !errors.Is(got, vmm.ErrSnapshot) || !errors.Is(got, fs.ErrNotExist) ||
		errors.Is(got, vmm.ErrConfig) {
		t.Fatalf("%v", got)
	}
	if decodeErr(encodeErr(nil)) != nil {
		t.Fatal("nil error came back non-nil")
	}
	if err := decodeErr([]byte("{")); err == nil {
		t.Fatal("garbage decoded")
	}
}

func TestStatsWire(t *testing.T) {
	s := vmm.Stats{Exits: 1, IOExits: 2, MMIOExits: 3, Hypercalls: 4, InputWaits: 5, Discards: 6, Discarded: 7, GuestTime: 8 * time.Second}
	if got, ok := decodeStats(encodeStats(s)); !ok || got != s {
		t.Fatalf("%+v", got)
	}
	if _, ok := decodeStats(nil); ok {
		t.Fatal("an empty reply decoded")
	}
}

// A result always fits one control message.
func TestResultFitsOneMessage(t *testing.T) {
	big := strings.Repeat("r", 200<<10)
	nr := map[uint32]uint32{}
	for i := range 5000 {
		nr[uint32(i)] = 1
	}
	b := encodeResult(&vmm.Result{Reason: vmm.ReasonPanic, Message: big, Regs: big, EnosysByNr: nr},
		fmt.Errorf("%w: %s", vmm.ErrGuest, big))
	if len(b)+headerLen > maxMsg {
		t.Fatalf("%d bytes", len(b))
	}
	var rm resultMsg
	if err := json.Unmarshal(b, &rm); err != nil || rm.Result.Reason != vmm.ReasonPanic || !errors.Is(rm.Err.err(), vmm.ErrGuest) ||
		!strings.HasPrefix(rm.Result.Message, "rrrr") {
		t.Fatalf("%v %+v", err, rm.Result.Reason)
	}
}

// The agent's decoders take what a worker sends; a confused worker must
// not crash the agent.
func FuzzDecode(f *testing.F) {
	f.Add(encodeErr(vmm.ErrConfig))
	f.Add(encodeStats(vmm.Stats{Exits: 1}))
	f.Add(encodeResult(&vmm.Result{Reason: vmm.ReasonExited}, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeErr(b)
		decodeStats(b)
		v := &VM{}
		v.event(message{typ: mResult, body: b})
	})
}
