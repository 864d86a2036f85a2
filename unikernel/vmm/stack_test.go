package vmm

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestBuildStack(t *testing.T) {
	const top = 64 << 20
	si := stackInfo{Phdr: 0x400040, Phent: 56, Phnum: 5, Entry: 0x401000, Hwcap: 0xbfebfbff}
	copy(si.Random[:], "0123456789abcdef")
	args := []string{"prog", "-x", ""}
	env := []string{"A=1", "KILN=yes"}
	rsp, data, err := buildStack(top, args, env, si)
	if err != nil {
		t.Fatal(err)
	}
	if rsp%16 != 0 || rsp+uint64(len(data)) != top {
		t.Fatalf("rsp %#x, %d bytes", rsp, len(data))
	}
	le := binary.LittleEndian
	word := func(addr uint64) uint64 { return le.Uint64(data[addr-rsp:]) }
	str := func(addr uint64) string {
		b := data[addr-rsp:]
		return string(b[:strings.IndexByte(string(b), 0)])
	}
	if argc := word(rsp); argc != 3 {
		t.Fatalf("argc %d", argc)
	}
	p := rsp + 8
	for _, a := range args {
		if got := str(word(p)); got != a {
			t.Errorf("argv: %q, want %q", got, a)
		}
		p += 8
	}
	if word(p) != 0 {
		t.Fatal("argv not NULL-terminated")
	}
	p += 8
	for _, e := range env {
		if got := str(word(p)); got != e {
			t.Errorf("envp: %q, want %q", got, e)
		}
		p += 8
	}
	if word(p) != 0 {
		t.Fatal("envp not NULL-terminated")
	}
	p += 8
	aux := map[uint64]uint64{}
	for {
		k, v := word(p), word(p+8)
		p += 16
		if k == atNull {
			break
		}
		aux[k] = v
	}
	for k, want := range map[uint64]uint64{atPhdr: 0x400040, atPhent: 56, atPhnum: 5, atPagesz: 4096,
		atEntry: 0x401000, atBase: 0, atUID: 0, atSecure: 0, atClktck: 100, atHwcap: 0xbfebfbff} {
		if got, ok := aux[k]; !ok || got != want {
			t.Errorf("auxv[%d] = %#x (present %v), want %#x", k, got, ok, want)
		}
	}
	if r := aux[atRandom]; r%1 != 0 || string(data[r-rsp:r-rsp+16]) != "0123456789abcdef" {
		t.Errorf("AT_RANDOM bytes wrong")
	}
	if str(aux[atPlatform]) != "x86_64" || str(aux[atExecfn]) != "prog" {
		t.Errorf("platform %q execfn %q", str(aux[atPlatform]), str(aux[atExecfn]))
	}

	for name, a := range map[string][]string{
		"nul":  {"a\x00b"},
		"huge": {strings.Repeat("x", maxArgBytes)},
	} {
		if _, _, err := buildStack(top, a, nil, si); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
}
