// Package redistest starts a real redis-server for tests: the stores and
// roles that use Redis are tested against the real thing, never a mock.
package redistest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Start runs a real redis-server on a free 127.0.0.1 port until the test
// ends and returns its URL. Without the binary the test is skipped loudly,
// naming what goes untested (what), unless KILN_REQUIRE_REDIS=1 (CI) makes
// that a failure.
func Start(t testing.TB, what string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server is not installed, so " + what + " is NOT tested (apt-get install -y redis-server)"
		if os.Getenv("KILN_REQUIRE_REDIS") == "1" {
			t.Fatal(msg + "; KILN_REQUIRE_REDIS=1 makes this a failure")
		}
		t.Skip("SKIPPING: " + msg)
	}
	var errs []string
	// The port is free when probed but another process may bind it
	// before the server does: try a few.
	for range 3 {
		url, err := runRedis(t, bin)
		if err == nil {
			return url
		}
		errs = append(errs, err.Error())
	}
	t.Fatalf("redis-server did not start: %s", strings.Join(errs, "; "))
	return ""
}

func runRedis(t testing.TB, bin string) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	var out bytes.Buffer
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", fmt.Sprint(port),
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			t.Cleanup(stop)
			return "redis://" + addr + "/0", nil
		}
		select {
		case werr := <-exited:
			return "", fmt.Errorf("exited (%v): %s", werr, out.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("no answer to PING within 10s (%v): %s", err, out.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}
