package nodeagent

import (
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
