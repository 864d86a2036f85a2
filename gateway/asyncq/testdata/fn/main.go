// fn is the async tests' function: a serve function (the Kiln wire
// protocol on stdin/stdout) run as a host process by the node-agent's
// ProcessBooter. Each request appends "ID ATTEMPT PATH start" and
// "... end" lines to the file named by $TRACE, so a test can count the
// runs of an invocation; the path chooses the behaviour.
package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/kilnfaas/kiln/proto/wire"
)

func main() {
	for {
		req, err := wire.ReadRequest(os.Stdin, 0)
		if err == io.EOF {
			os.Exit(0)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "fn:", err)
			os.Exit(2)
		}
		id, attempt := req.Header.Get("X-Kiln-Invocation-Id"), req.Header.Get("X-Kiln-Attempt")
		trace(id, attempt, req.Path, "start")
		status := 200
		q := query(req.Query)
		switch req.Path {
		case "/status":
			status, _ = strconv.Atoi(q["code"])
		case "/sleep":
			ms, _ := strconv.Atoi(q["ms"])
			time.Sleep(time.Duration(ms) * time.Millisecond)
		case "/crash":
			fmt.Fprintln(os.Stderr, "fn: crashing on purpose")
			os.Exit(3)
		}
		trace(id, attempt, req.Path, "end")
		fmt.Fprintf(os.Stderr, "fn: %s attempt %s answered %d\n", id, attempt, status)
		resp := &wire.Response{ID: req.ID, Status: status,
			Header: map[string][]string{"X-Fn": {"yes"}, "Content-Type": {"text/plain"}},
			Body:   []byte(fmt.Sprintf("%s %s attempt=%s id=%s body=%s", req.Method, req.Path, attempt, id, req.Body))}
		if err := wire.WriteResponse(os.Stdout, resp); err != nil {
			os.Exit(4)
		}
	}
}

func trace(id, attempt, path, what string) {
	f, err := os.OpenFile(os.Getenv("TRACE"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	fmt.Fprintf(f, "%s %s %s %s\n", id, attempt, path, what)
	f.Close()
}

func query(raw string) map[string]string {
	m := map[string]string{}
	for len(raw) > 0 {
		var kv string
		kv, raw, _ = cut(raw, '&')
		k, v, _ := cut(kv, '=')
		m[k] = v
	}
	return m
}

func cut(s string, sep byte) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
