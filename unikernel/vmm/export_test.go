package vmm

import "fmt"

// SnapshotLayout describes how a restore of s lays it out (planSnapLayout),
// for the KVM tests of package vmm_test.
func SnapshotLayout(s *Snapshot) string {
	l := planSnapLayout(s.nonZero, s.hdr.MemSize/pageSize)
	var copied uint64
	for _, r := range l.copied {
		copied += r.pages()
	}
	return fmt.Sprintf("%d pages in %d runs: %d mapped (%d hole pages among them), %d runs copied (%d pages)",
		s.hdr.Pages, l.runs, len(l.mapped), l.gapPages, len(l.copied), copied)
}
