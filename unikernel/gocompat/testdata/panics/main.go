// Command panics provokes the runtime errors that reach Go as hardware
// faults turned into signals — nil dereference (SIGSEGV), integer division
// by zero (SIGFPE) — and the ones the compiler checks itself (index and
// slice bounds, nil map, failed type assertion), recovers each and prints
// the panic message. Repeating the faults checks that the guest kernel's
// signal frames and rt_sigreturn leave the thread healthy every time.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

type node struct {
	next *node
	val  int
}

// Package-level so the compiler cannot prove the divisor or index.
var (
	zero  = 0
	three = 3
	nilp  *node
	idx   = len(os.Args) + 4
)

func main() {
	cases := []struct {
		name string
		f    func()
	}{
		{"nil dereference", func() { fmt.Println(nilp.val) }},
		{"nil dereference far", func() { var p *[1 << 20]byte; fmt.Println(p[1<<19]) }},
		{"nil method value", func() { var n *node; fmt.Println(n.next.val) }},
		{"integer divide by zero", func() { fmt.Println(three / zero) }},
		{"integer modulo by zero", func() { fmt.Println(three % zero) }},
		{"index out of range", func() { s := []int{1, 2, 3}; fmt.Println(s[idx]) }},
		{"slice bounds", func() { s := []int{1, 2, 3}; fmt.Println(s[1:idx]) }},
		{"nil map write", func() { var m map[string]int; m["x"] = 1 }},
		{"type assertion", func() { var v any = "str"; fmt.Println(v.(int)) }},
		{"explicit panic", func() { panic(fmt.Sprintf("custom %d", 42)) }},
	}
	for _, c := range cases {
		msg, isRuntime := catch(c.f)
		check.Value(c.name, "%s (runtime.Error %v)", msg, isRuntime)
	}

	// Faults in a loop and on other goroutines: every one must be delivered.
	n := 0
	for i := 0; i < 200; i++ {
		if m, _ := catch(func() { fmt.Println(nilp.next) }); strings.Contains(m, "nil pointer") {
			n++
		}
		if m, _ := catch(func() { fmt.Println(three / zero) }); strings.Contains(m, "divide by zero") {
			n++
		}
	}
	check.That("400 recovered faults in a loop", n == 400, "recovered %d", n)

	done := make(chan string, 8)
	for g := 0; g < 8; g++ {
		go func() {
			m, _ := catch(func() { fmt.Println(nilp.val) })
			done <- m
		}()
	}
	ok := 0
	for g := 0; g < 8; g++ {
		if strings.Contains(<-done, "nil pointer dereference") {
			ok++
		}
	}
	check.That("faults on 8 goroutines", ok == 8, "%d of 8 recovered", ok)

	// Deep recursion into a fresh stack segment still works after faults.
	check.That("stack growth after faults", depth(100000) == 100000, "wrong depth")
	check.Done()
}

func catch(f func()) (msg string, isRuntime bool) {
	defer func() {
		r := recover()
		_, isRuntime = r.(interface{ RuntimeError() })
		msg = fmt.Sprint(r)
	}()
	f()
	return "no panic", false
}

func depth(n int) int {
	var pad [64]byte
	pad[n%64] = 1
	if n == 0 {
		return int(pad[0]) - 1
	}
	return depth(n-1) + int(pad[n%64])
}
