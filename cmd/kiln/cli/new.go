package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/store/registry"
)

// starters are the files `kiln new` writes, per language; NAME is replaced
// by the function's name.
var starters = map[string]map[string]string{
	"go": {
		"go.mod": `module NAME

go 1.22

// kiln deploy and kiln build supply this module (the Go SDK) themselves.
// To build or test here with the go command, point it at a Kiln checkout:
//   go mod edit -replace github.com/kilnfaas/kiln=/path/to/kiln
require github.com/kilnfaas/kiln v0.0.0
`,
		"main.go": `// Command NAME is a Kiln function. Deploy it with
//
//	kiln deploy NAME .
//
// and call it with curl -d world $KILN_SERVER/function/NAME.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/kilnfaas/kiln/sdk/go"
)

// handle answers one request. What it writes to stderr is the function's
// log; an error or a panic answers 500.
func handle(ctx context.Context, req *kiln.Request) (*kiln.Response, error) {
	fmt.Fprintf(os.Stderr, "%s %s (%d bytes)\n", req.Method, req.Path, len(req.Body))
	who := string(req.Body)
	if who == "" {
		who = "world"
	}
	return kiln.Text(200, "hello, "+who+"\n"), nil
}

func main() {
	kiln.Serve(handle)
}
`,
	},
	"c": {
		"main.c": `/*
 * NAME — a Kiln function in C. Deploy it with
 *
 *     kiln deploy NAME .
 *
 * kiln.h (the C SDK) comes with kiln; to build here by hand:
 *     musl-gcc -static -O2 -I/path/to/kiln/sdk/c -o NAME main.c
 */
#include <stdio.h>
#include <string.h>
#include "kiln.h"

static char out[4096];

/* Answers one request; what it writes to stderr is the function's log.
 * A non-zero return answers 500. */
static int handle(const struct kiln_request *req, struct kiln_response *resp, void *arg)
{
    (void)arg;
    fprintf(stderr, "%s %s (%zu bytes)\n", req->method, req->path, req->body_len);
    int n = snprintf(out, sizeof(out), "hello, %.*s\n",
                     req->body_len ? (int)(req->body_len > 4000 ? 4000 : req->body_len) : 5,
                     req->body_len ? req->body : "world");
    resp->status = 200;
    resp->content_type = "text/plain";
    resp->body = out;
    resp->body_len = (size_t)n;
    return 0;
}

int main(void)
{
    return kiln_serve(handle, NULL);
}
`,
	},
}

func (a *app) newCmd() *cobra.Command {
	var lang string
	cmd := &cobra.Command{
		Use:   "new NAME --lang go|c",
		Short: "Write a starter function into the new directory NAME",
		Long: `Write a starter function into the new directory NAME: a serve function
that answers "hello, <body>", ready for 'kiln deploy NAME ./NAME', with
its deploy settings in NAME/kiln.yaml (commented: edit and redeploy).
An existing NAME is never overwritten.`,
		Example: `  kiln new hello --lang go && kiln deploy hello ./hello
  kiln new upper --lang c`,
		Args: usage(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			name := filepath.Base(dir)
			if err := registry.CheckName(name); err != nil {
				return &ExitError{Code: 2, Err: fmt.Errorf("new: %w", err)}
			}
			files, ok := starters[lang]
			if !ok {
				return &ExitError{Code: 2, Err: fmt.Errorf("new: --lang %q: choose go or c", lang)}
			}
			if _, err := os.Lstat(dir); err == nil {
				return &ExitError{Code: 1, Err: fmt.Errorf("new: %s already exists; choose another name or remove it", dir)}
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("new: %w", err)
			}
			// Mkdir (not MkdirAll) so a directory created meanwhile by
			// someone else is refused, not written into.
			if err := os.Mkdir(dir, 0o755); err != nil {
				return fmt.Errorf("new: %w", err)
			}
			for file, text := range files {
				text = strings.ReplaceAll(text, "NAME", name)
				if err := os.WriteFile(filepath.Join(dir, file), []byte(text), 0o644); err != nil {
					return fmt.Errorf("new: %w", err)
				}
			}
			manifest := strings.ReplaceAll(manifestTemplate, "NAME", name)
			if err := os.WriteFile(filepath.Join(dir, ManifestFile), []byte(manifest), 0o644); err != nil {
				return fmt.Errorf("new: %w", err)
			}
			fmt.Fprintf(a.out, "wrote %s/ (%s; deploy settings in %s). Deploy it and call it:\n  kiln deploy %s %s\n  kiln invoke %s -d world\n",
				dir, lang, filepath.Join(dir, ManifestFile), name, dir, name)
			return nil
		},
	}
	cmd.Flags().StringVar(&lang, "lang", "go", "go or c")
	return cmd
}
