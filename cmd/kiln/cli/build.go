package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/builder"
)

// buildTimeout bounds one build; a first build that downloads modules
// into an empty cache is the slow case it allows for.
const buildTimeout = 10 * time.Minute

func (a *app) buildCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "build DIR [-o FILE]",
		Short: "Build a function's source (a Go module or C files) into the static ELF Kiln boots",
		Long: `Build a function's source into the static x86-64 ELF that Kiln boots, as
'kiln deploy NAME DIR' would, without deploying it.

A directory with a go.mod is built with CGO_ENABLED=0 GOOS=linux GOARCH=amd64
(go generate is never run); its use of the Go SDK (github.com/kilnfaas/kiln)
is satisfied by the SDK inside this kiln. A directory of *.c files is built
with musl-gcc -static -O2, with kiln.h on the include path.`,
		Example: `  kiln build ./hello -o hello && kiln run --local ./hello < request.bin
  kiln build examples/sha256 -o build/sha256`,
		Args: usage(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if out == "" {
				abs, err := filepath.Abs(dir)
				if err != nil {
					return fmt.Errorf("build: %w", err)
				}
				out = filepath.Base(abs)
			}
			elf, err := a.buildSource(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if st, err := os.Stat(out); err == nil && st.IsDir() {
				out = filepath.Join(out, filepath.Base(dir))
			}
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return fmt.Errorf("build: %w", err)
			}
			// Through a temporary name, so an interrupted build never
			// leaves half a program where a whole one is expected.
			tmp := out + ".tmp"
			if err := os.WriteFile(tmp, elf, 0o755); err != nil {
				return fmt.Errorf("build: %w", err)
			}
			if err := os.Rename(tmp, out); err != nil {
				os.Remove(tmp)
				return fmt.Errorf("build: %w", err)
			}
			fmt.Fprintf(a.out, "built %s (%.1f MiB)\n", out, float64(len(elf))/(1<<20))
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "where to write the program (default: the directory's name, here)")
	return cmd
}

// buildSource builds dir with a spinner on a terminal and one line per
// step elsewhere, so that a build's minutes are never silent.
func (a *app) buildSource(ctx context.Context, dir string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	var bar *progressbar.ProgressBar
	progress := func(step string) { fmt.Fprintf(a.err, "kiln: %s\n", step) }
	if isTerminal(a.err) {
		bar = progressbar.NewOptions(-1,
			progressbar.OptionSetWriter(a.err),
			progressbar.OptionSetDescription("building "+dir),
			progressbar.OptionSpinnerType(14),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionClearOnFinish(),
		)
		progress = func(step string) { bar.Describe(step) }
	}
	elf, err := builder.BuildSource(ctx, dir, progress)
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return nil, &ExitError{Code: 1, Err: err}
	}
	return elf, nil
}
