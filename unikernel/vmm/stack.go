package vmm

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Auxiliary vector keys (linux/auxvec.h).
const (
	atNull     = 0
	atPhdr     = 3
	atPhent    = 4
	atPhnum    = 5
	atPagesz   = 6
	atBase     = 7
	atFlags    = 8
	atEntry    = 9
	atUID      = 11
	atEUID     = 12
	atGID      = 13
	atEGID     = 14
	atPlatform = 15
	atHwcap    = 16
	atClktck   = 17
	atSecure   = 23
	atRandom   = 25
	atExecfn   = 31
)

// maxArgBytes bounds argv+envp strings, as Linux bounds them to a quarter
// of the stack.
const maxArgBytes = stackSize / 4

// stackInfo is what buildStack needs besides argv and envp.
type stackInfo struct {
	Phdr, Phent, Phnum, Entry uint64
	Hwcap                     uint64
	Random                    [16]byte
}

// buildStack lays out the function's initial stack below top exactly as
// Linux's execve does — strings and AT_RANDOM bytes at the top, then,
// 16-byte aligned, argc, argv[], NULL, envp[], NULL, auxv pairs, AT_NULL —
// and returns its bytes (to be written at the returned rsp) and rsp.
func buildStack(top uint64, args, env []string, si stackInfo) (rsp uint64, data []byte, err error) {
	total := 0
	for _, s := range append(append([]string(nil), args...), env...) {
		if strings.IndexByte(s, 0) >= 0 {
			return 0, nil, fmt.Errorf("%w: argument or environment string contains a NUL byte", ErrConfig)
		}
		total += len(s) + 1
	}
	if total > maxArgBytes {
		return 0, nil, fmt.Errorf("%w: arguments and environment take %d bytes, the limit is %d", ErrConfig, total, maxArgBytes)
	}
	if top%16 != 0 || top < stackSize {
		return 0, nil, fmt.Errorf("%w: stack top %#x", ErrConfig, top)
	}

	// Strings region, built downward from top (an 8-byte zero end marker first).
	var strs []byte
	pos := top - 8
	put := func(b []byte) uint64 {
		pos -= uint64(len(b))
		strs = append(append([]byte(nil), b...), strs...)
		return pos
	}
	execfn := "kiln"
	if len(args) > 0 {
		execfn = args[0]
	}
	execfnAddr := put(append([]byte(execfn), 0))
	envAddrs := make([]uint64, len(env))
	for i := len(env) - 1; i >= 0; i-- {
		envAddrs[i] = put(append([]byte(env[i]), 0))
	}
	argAddrs := make([]uint64, len(args))
	for i := len(args) - 1; i >= 0; i-- {
		argAddrs[i] = put(append([]byte(args[i]), 0))
	}
	platformAddr := put([]byte("x86_64\x00"))
	randomAddr := put(si.Random[:])
	strBase := pos &^ 15

	auxv := [][2]uint64{
		{atPhdr, si.Phdr}, {atPhent, si.Phent}, {atPhnum, si.Phnum}, {atPagesz, pageSize},
		{atBase, 0}, {atFlags, 0}, {atEntry, si.Entry},
		{atUID, 0}, {atEUID, 0}, {atGID, 0}, {atEGID, 0}, {atSecure, 0},
		{atHwcap, si.Hwcap}, {atClktck, 100}, {atPlatform, platformAddr},
		{atRandom, randomAddr}, {atExecfn, execfnAddr}, {atNull, 0},
	}
	words := 1 + len(args) + 1 + len(env) + 1 + 2*len(auxv)
	rsp = strBase - uint64(words)*8
	rsp &^= 15 // argc at a 16-byte boundary, as the x86-64 ABI promises _start
	vec := make([]byte, strBase-rsp)
	le := binary.LittleEndian
	w := 0
	word := func(v uint64) { le.PutUint64(vec[w:], v); w += 8 }
	word(uint64(len(args)))
	for _, a := range argAddrs {
		word(a)
	}
	word(0)
	for _, e := range envAddrs {
		word(e)
	}
	word(0)
	for _, kv := range auxv {
		word(kv[0])
		word(kv[1])
	}
	// Between the vectors and the strings: alignment padding (zero), then
	// the strings, then the end marker.
	data = make([]byte, top-rsp)
	copy(data, vec)
	copy(data[pos-rsp:], strs)
	return rsp, data, nil
}
