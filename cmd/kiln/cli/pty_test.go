package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
)

// terminal is a real pseudo-terminal: the command gets its slave side as a
// standard stream, the test reads what appeared on the screen from the
// master side and types into it.
type terminal struct {
	master, slave *os.File
	screen        lockedBuffer
	done          chan struct{}
}

func openTerminal(t *testing.T) *terminal {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Fatalf("unlocking the pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("opening the pty's slave: %v", err)
	}
	term := &terminal{master: m, slave: s, done: make(chan struct{})}
	go func() { io.Copy(&term.screen, m); close(term.done) }()
	t.Cleanup(func() {
		s.Close()
		m.Close()
		<-term.done
	})
	return term
}

func (tm *terminal) typeLine(t *testing.T, line string) {
	t.Helper()
	if _, err := tm.master.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
}

// waitFor returns once the screen shows s, or fails after 10 s.
func (tm *terminal) waitFor(t *testing.T, s string) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !strings.Contains(tm.screen.String(), s); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the terminal never showed %q; it shows %q", s, tm.screen.String())
		}
	}
}

// run runs kiln with stdin and stderr on the terminal (stdout a buffer).
func (tm *terminal) run(args ...string) result {
	var out bytes.Buffer
	code := cli.Main(context.Background(), args, tm.slave, &out, tm.slave)
	return result{code: code, out: out.String()}
}

// On a terminal, an upload shows a progress bar with the bytes sent out of
// the total; off a terminal it shows nothing.
func TestUploadProgressBarOnTerminal(t *testing.T) {
	prog := staticC(t)
	p, k := upNoAgent(t, prog)
	st, err := os.Stat(prog)
	if err != nil {
		t.Fatal(err)
	}
	tm := openTerminal(t)
	if r := tm.run("--server", p.URL, "deploy", "web", "--binary", prog); r.code != 0 || !strings.Contains(r.out, "deployed web version 1") {
		t.Fatalf("deploy on a terminal: %+v\nscreen: %q", r, tm.screen.String())
	}
	tm.waitFor(t, "uploading web")
	// Sent out of the total, in progressbar's units (kB for this program,
	// rounded).
	tm.waitFor(t, " kB,")
	m := regexp.MustCompile(`\((\d+)/(\d+) kB, `).FindStringSubmatch(tm.screen.String())
	if m == nil {
		t.Fatalf("no sent/total on the terminal: %q", tm.screen.String())
	}
	sent, _ := strconv.Atoi(m[1])
	total, _ := strconv.Atoi(m[2])
	if want := int(math.Round(float64(st.Size()) / 1000)); total != want || sent > total {
		t.Errorf("progress %s/%s kB; want a total of %d kB", m[1], m[2], want)
	}
	if r := k("deploy", "web", "--binary", prog); r.code != 0 || strings.Contains(r.err, "uploading") || strings.Contains(r.err, "%") {
		t.Errorf("deploy off a terminal drew a progress bar: %+v", r)
	}
}

// kiln delete on a terminal asks, and deletes only when the function's
// name is typed back.
func TestDeleteAsksOnTerminal(t *testing.T) {
	prog := staticC(t)
	p, k := upNoAgent(t, prog)
	if r := k("deploy", "web", "--binary", prog); r.code != 0 {
		t.Fatalf("deploy: %+v", r)
	}
	tm := openTerminal(t)
	tm.typeLine(t, "y")
	if r := tm.run("--server", p.URL, "delete", "web"); r.code != 1 {
		t.Fatalf("delete answered y: %+v; want exit 1 (the name must be typed)", r)
	}
	tm.waitFor(t, "Delete function web with its 1 version(s) and aliases? Calls to it will answer 404. Type web to confirm:")
	tm.waitFor(t, "not confirmed, nothing deleted")
	if r := k("describe", "web"); r.code != 0 {
		t.Fatalf("web gone after an unconfirmed delete: %+v", r)
	}
	tm.typeLine(t, "web")
	if r := tm.run("--server", p.URL, "delete", "web"); r.code != 0 || r.out != "deleted web: calls to it now answer 404\n" {
		t.Fatalf("delete confirmed: %+v\nscreen: %q", r, tm.screen.String())
	}
	if r := k("describe", "web"); r.code != 1 || !strings.Contains(r.err, "404") {
		t.Fatalf("describe after a confirmed delete: %+v", r)
	}
}
