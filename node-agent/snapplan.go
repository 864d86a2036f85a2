package nodeagent

import (
	"time"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// kind is the start a plan makes.
func (p snapPlan) kind() kilnv1.StartKind {
	if p.restore != nil {
		return kilnv1.StartKind_START_RESTORE
	}
	return kilnv1.StartKind_START_BOOT
}

// plan picks a restore or a boot for cfg and sets cfg up for it. veto,
// called once a snapshot is written, may say why this shape must never be
// restored (and the snapshot is then removed).
func (a *Agent) plan(s *spec, cfg *vmm.Config, veto func() string) snapPlan {
	if a.snaps == nil {
		return snapPlan{}
	}
	p := a.snaps.plan(snapKey(s.digest, a.kernelSum, cfg), cfg)
	if p.corrupt != nil {
		a.m.snapshots.WithLabelValues("corrupt").Inc()
	}
	switch {
	case p.restore != nil:
		cfg.Snapshot = p.restore
		a.m.snapshots.WithLabelValues("restored").Inc()
	case p.take != "":
		cfg.SnapshotPath = p.take
		cfg.OnSnapshot = func(err error) {
			why := ""
			if err == nil && veto != nil {
				why = veto()
			}
			if err == nil && why == "" {
				a.m.snapshots.WithLabelValues("taken").Inc()
			}
			a.snaps.taken(p.key, err, why)
		}
	}
	return p
}

// startSnapshots connects the snapshot store to the agent's metrics and
// instances, trims it once (files left by an earlier run count against the
// bound) and keeps trimming it for age until stop is closed.
func (a *Agent) startSnapshots(stop <-chan struct{}) {
	st := a.snaps
	st.inUse = a.liveShapes
	st.onFail = func(reason string) { a.m.snapshotFailures.WithLabelValues(reason).Inc() }
	st.onDelete = func(reason string) { a.m.snapshotsDeleted.WithLabelValues(reason).Inc() }
	st.onTrim = func(n int64) { a.m.snapshotBytes.Set(float64(n)) }
	st.trim("")
	go func() {
		t := time.NewTicker(trimEvery / 4)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				st.maybeTrim()
			}
		}
	}()
}

// liveShapes is the snapshot keys of the serve instances alive now: their
// snapshots stay while they do (their pools restore from them next).
func (a *Agent) liveShapes() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	live := make(map[string]bool, len(a.instances))
	for in := range a.instances {
		if in.snap != "" {
			live[in.snap] = true
		}
	}
	return live
}
