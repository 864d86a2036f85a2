// Command wallclock compares the wall clock it sees with the host's: the
// harness passes the host's time in Unix nanoseconds (KILN_HOST_NOW_NS),
// taken just before it started this program, so time.Now() must lie
// between that and that plus the start-up allowance (KILN_CLOCK_SLACK_MS,
// default 10000). The reading itself goes to stderr as "now_ns N" for the
// harness to bracket precisely against the end of the run.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	now := time.Now()
	fmt.Fprintf(os.Stderr, "now_ns %d\n", now.UnixNano())
	host, err := strconv.ParseInt(os.Getenv("KILN_HOST_NOW_NS"), 10, 64)
	if err != nil {
		check.Fail("KILN_HOST_NOW_NS", "%v", err)
		check.Done()
	}
	slack := 10 * time.Second
	if v, err := strconv.Atoi(os.Getenv("KILN_CLOCK_SLACK_MS")); err == nil {
		slack = time.Duration(v) * time.Millisecond
	}
	d := now.Sub(time.Unix(0, host))
	// A reading a millisecond early is clock granularity; more is a wrong clock.
	check.That("wall clock after the host's start time", d >= -time.Millisecond, "%v before the host", -d)
	check.That("wall clock within the start-up allowance", d < slack, "%v after the host (allowance %v)", d, slack)

	// The clocks move forward and agree with each other.
	m0 := time.Now()
	time.Sleep(20 * time.Millisecond)
	m1 := time.Now()
	mono := m1.Sub(m0)
	wall := m1.Round(0).Sub(m0.Round(0))
	check.That("monotonic clock advances", mono >= 20*time.Millisecond, "slept 20ms, monotonic says %v", mono)
	skew := wall - mono
	check.That("wall and monotonic agree", skew > -2*time.Millisecond && skew < 2*time.Millisecond,
		"wall %v vs monotonic %v", wall, mono)
	y := now.UTC().Year()
	check.That("plausible year", y >= 2024 && y < 2100, "year %d", y)
	check.Done()
}
