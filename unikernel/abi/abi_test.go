package abi

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// constants pairs each C macro with its Go twin.
var constants = map[string]uint64{
	"KILN_ABI_VERSION":   Version,
	"KILN_PAGETABLE_GPA": PageTableGPA,
	"KILN_BOOTINFO_GPA":  BootInfoGPA,
	"KILN_GDT_GPA":       GDTGPA,
	"KILN_TSS_GPA":       TSSGPA,
	"KILN_IDT_GPA":       IDTGPA,
	"KILN_R0_STACK_TOP":  R0StackTop,
	"KILN_IST_STACK_TOP": ISTStackTop,
	"KILN_KERNEL_BASE":   KernelBase,
	"KILN_KERNEL_LIMIT":  KernelLimit,
	"KILN_USER_BASE":     UserBase,
	"KILN_MMIO_GPA":      MMIOGPA,
	"KILN_MEM_MAX":       MemMax,
	"KILN_MEM_ALIGN":     MemAlign,
	"KILN_HOSTNAME_MAX":  HostnameMax,
	"KILN_ENOSYS_SLOTS":  EnosysSlots,
	"KILN_BOOT_MAGIC":    BootMagic,
	"KILN_HC_MMIO_BASE":  HCMMIOBase,
	"KILN_HC_PIO_BASE":   HCPIOBase,
	"KILN_HC_IO":         HCIO,
	"KILN_HC_EXIT":       HCExit,
	"KILN_HC_DISCARD":    HCDiscard,
	"KILN_HC_MAX":        HCMax,
	"KILN_DISCARD_MAX":   DiscardMax,
	"KILN_IO_WAIT_INPUT": IOWaitInput,
	"KILN_EXIT_NORMAL":   ExitNormal,
	"KILN_EXIT_SIGNAL":   ExitSignal,
	"KILN_EXIT_PANIC":    ExitPanic,
	"KILN_BOOT_FSGSBASE": BootFSGSBase,
	"KILN_BOOT_HC_PIO":   BootHCPIO,
	"KILN_BOOT_TRACE":    BootTrace,
	"KILN_SEL_KERNEL_CS": SelKernelCS,
	"KILN_SEL_KERNEL_DS": SelKernelDS,
	"KILN_SEL_USER32_CS": SelUser32CS,
	"KILN_SEL_USER_DS":   SelUserDS,
	"KILN_SEL_USER_CS":   SelUserCS,
	"KILN_SEL_TSS":       SelTSS,
}

// structs pairs each C struct with its Go twin and the C field names in
// declaration order (padding fields excluded: Go names them _).
var structs = []struct {
	c      string
	goType any
	fields []string
}{
	{"kiln_hc_io", HCIOArgs{}, []string{"out_gpa", "out_len", "err_gpa", "err_len", "in_gpa", "in_cap", "deadline_tsc", "flags", "_pad0", "in_len", "in_eof", "_pad1"}},
	{"kiln_hc_exit", HCExitArgs{}, []string{"out_gpa", "out_len", "err_gpa", "err_len", "status", "reason", "signo", "fault_vector", "fault_rip", "fault_addr", "fault_error", "syscalls", "enosys", "ring0_entries", "enosys_nr", "enosys_count", "mem_used", "mem_peak"}},
	{"kiln_discard_range", DiscardRange{}, []string{"gpa", "len"}},
	{"kiln_hc_discard", HCDiscardArgs{}, []string{"count", "_pad0", "ranges"}},
	{"kiln_boot_info", BootInfo{}, []string{"magic", "abi_version", "flags", "mem_size", "tsc_khz", "boot_tsc", "boot_wall_ns", "entropy", "entry", "phdr", "phnum", "phent", "image_start", "image_end", "stack_low", "stack_top", "initial_rsp", "hostname", "entropy_gen"}},
}

// TestHeaderAgrees compiles a probe against kiln_abi.h and checks every
// constant, struct size and field offset against this package.
func TestHeaderAgrees(t *testing.T) {
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to check the ABI header: %v", err)
	}
	var src bytes.Buffer
	src.WriteString("#include <stdio.h>\n#include <stddef.h>\n#include \"kiln_abi.h\"\nint main(void){\n")
	for name := range constants {
		src.WriteString("printf(\"" + name + "=%llu\\n\", (unsigned long long)(" + name + "));\n")
	}
	for _, s := range structs {
		src.WriteString("printf(\"sizeof " + s.c + "=%zu\\n\", sizeof(struct " + s.c + "));\n")
		for _, f := range s.fields {
			src.WriteString("printf(\"" + s.c + "." + f + "=%zu\\n\", offsetof(struct " + s.c + ", " + f + "));\n")
		}
	}
	src.WriteString("return 0;}\n")
	dir := t.TempDir()
	cfile := filepath.Join(dir, "probe.c")
	if err := os.WriteFile(cfile, src.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	here, _ := os.Getwd()
	bin := filepath.Join(dir, "probe")
	if out, err := exec.Command(cc, "-std=c11", "-Wall", "-Werror", "-I", here, "-o", bin, cfile).CombinedOutput(); err != nil {
		t.Fatalf("compiling the probe: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("probe line %q: %v", sc.Text(), err)
		}
		got[k] = n
	}
	for name, want := range constants {
		if got[name] != want {
			t.Errorf("%s: C says %#x, Go says %#x", name, got[name], want)
		}
	}
	for _, s := range structs {
		typ := reflect.TypeOf(s.goType)
		if c := got["sizeof "+s.c]; c != uint64(typ.Size()) {
			t.Errorf("sizeof %s: C %d, Go %d", s.c, c, typ.Size())
		}
		if typ.NumField() != len(s.fields) {
			t.Fatalf("%s: Go has %d fields, the test lists %d", s.c, typ.NumField(), len(s.fields))
		}
		for i, f := range s.fields {
			if c := got[s.c+"."+f]; c != uint64(typ.Field(i).Offset) {
				t.Errorf("%s.%s: C offset %d, Go field %s at %d", s.c, f, c, typ.Field(i).Name, typ.Field(i).Offset)
			}
		}
	}
}
