// fn is the agent's host-test function: an ordinary program that runs as an
// exec function (argv[1] == "exec") or a serve function speaking the wire
// protocol, with behaviours chosen by the request so that one binary covers
// every outcome.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/kilnfaas/kiln/proto/wire"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "exec" {
		execMain()
		return
	}

	served := 0
	for {
		req, err := wire.ReadRequest(os.Stdin, 0)
		if err == io.EOF {
			os.Exit(0)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "fn:", err)
			os.Exit(2)
		}
		served++
		switch req.Path {
		case "/crash":
			fmt.Fprintln(os.Stderr, "fn: about to crash")
			os.Exit(3)
		case "/sleep":
			time.Sleep(time.Minute)
		case "/hold":
			time.Sleep(300 * time.Millisecond)
		case "/hold20":
			time.Sleep(20 * time.Millisecond)
		case "/hold3s":
			time.Sleep(3 * time.Second)
		case "/garbage":
			os.Stdout.Write([]byte("this is not a frame at all, not at all"))
			time.Sleep(time.Minute)
		}
		fmt.Fprintf(os.Stderr, "fn: served %d\n", served)
		resp := &wire.Response{ID: req.ID, Status: 201, Header: map[string][]string{"X-Served": {fmt.Sprint(served)}},
			Body: []byte(fmt.Sprintf("%s %s?%s env=%s %s", req.Method, req.Path, req.Query, os.Getenv("GREETING"), req.Body))}
		if err := wire.WriteResponse(os.Stdout, resp); err != nil {
			os.Exit(4)
		}
	}
}

func execMain() {
	in, _ := io.ReadAll(os.Stdin)
	switch s := strings.TrimSpace(string(in)); s {
	case "fail":
		for i := 1; i <= 30; i++ {
			fmt.Fprintf(os.Stderr, "line %d\n", i)
		}
		os.Exit(7)
	case "sleep":
		time.Sleep(time.Minute)
	case "kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Minute)
	}
	fmt.Printf("exec:%s", in)
}
