package vmm

import (
	"encoding/binary"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// Page-table entry bits.
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	pteUser     = 1 << 2
	ptePWT      = 1 << 3
	ptePCD      = 1 << 4
	pteHuge     = 1 << 7 // a PD entry maps a 2 MiB page
)

// pageTables returns the bytes of the guest's page tables, to be placed at
// pml4GPA: PML4, PDPT and four PDs covering the low 4 GiB. Guest RAM from
// 2 MiB to memSize and the doorbell page are identity-mapped with 2 MiB
// pages, present, writable and user (one protection domain). The first
// 2 MiB stay unmapped so a NULL dereference faults; the tables live there,
// out of the guest's reach.
func pageTables(memSize uint64) []byte {
	const entry = 8
	b := make([]byte, (2+pdCount)*pageSize)
	le := binary.LittleEndian
	table := func(gpa uint64) []byte { return b[gpa-pml4GPA : gpa-pml4GPA+pageSize] }
	le.PutUint64(table(pml4GPA), pdptGPA|ptePresent|pteWritable|pteUser)
	for i := uint64(0); i < pdCount; i++ {
		le.PutUint64(table(pdptGPA)[i*entry:], (pdGPA+i*pageSize)|ptePresent|pteWritable|pteUser)
	}
	mapHuge := func(gpa, flags uint64) {
		idx := gpa / hugePage // 0..2047 across the four PDs
		pd := table(pdGPA + (idx/512)*pageSize)
		le.PutUint64(pd[(idx%512)*entry:], gpa|ptePresent|pteWritable|pteUser|pteHuge|flags)
	}
	for gpa := uint64(firstMapped); gpa < memSize; gpa += hugePage {
		mapHuge(gpa, 0)
	}
	// Doorbells are device memory: uncached, so no store is ever combined.
	mapHuge(abi.MMIOGPA&^(hugePage-1), ptePCD|ptePWT)
	return b
}

// translate walks tables built by pageTables (for tests): the guest
// physical address va maps to, and whether it is mapped.
func translate(tables []byte, va uint64) (uint64, bool) {
	le := binary.LittleEndian
	read := func(gpa, idx uint64) uint64 {
		off := gpa - pml4GPA + idx*8
		if gpa < pml4GPA || off+8 > uint64(len(tables)) {
			return 0
		}
		return le.Uint64(tables[off:])
	}
	const addrMask = 0x000ffffffffff000
	e := read(pml4GPA, (va>>39)&511)
	if e&ptePresent == 0 {
		return 0, false
	}
	e = read(e&addrMask, (va>>30)&511)
	if e&ptePresent == 0 {
		return 0, false
	}
	e = read(e&addrMask, (va>>21)&511)
	if e&ptePresent == 0 || e&pteHuge == 0 {
		return 0, false
	}
	return (e & addrMask &^ (hugePage - 1)) | va&(hugePage-1), true
}
