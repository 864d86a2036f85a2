package builder

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kilnfaas/kiln/sdk"
)

// Sentinel errors of building source. Wrapped with %w; test with errors.Is.
var (
	// ErrBuild: the compiler refused the source (its output is in the
	// error's text), or could not be run.
	ErrBuild = errors.New("builder: build failed")
	// ErrNoSource: the directory is neither a Go module nor C source.
	ErrNoSource = errors.New("builder: no source Kiln can build")
)

// Languages BuildSource knows, as Detect names them.
const (
	LangGo = "go"
	LangC  = "c"
)

// Detect says how dir would be built: LangGo for a directory with a go.mod,
// LangC for one with *.c files and no go.mod. Anything else is ErrNoSource
// with a sentence saying what Kiln looks for.
func Detect(dir string) (string, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNoSource, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%w: %s is a file, not a directory of source", ErrNoSource, dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
		return LangGo, nil
	}
	if cs, _ := filepath.Glob(filepath.Join(dir, "*.c")); len(cs) > 0 {
		return LangC, nil
	}
	return "", fmt.Errorf("%w: %s has neither a go.mod (a Go main package) nor *.c files (C on sdk/c/kiln.h)", ErrNoSource, dir)
}

// BuildSource builds the function whose source is in dir into a static
// x86-64 Linux ELF, deciding by content (see Detect):
//
//   - Go: `go build -trimpath` with CGO_ENABLED=0 GOOS=linux GOARCH=amd64,
//     in a temporary copy of dir, with the user's module cache and build
//     cache. `go generate` is never run. If go.mod requires the Kiln module
//     (for the Go SDK), it is replaced by a module holding only the SDK,
//     written from the copy inside this binary, so no Kiln checkout and no
//     download of the platform's own dependencies is needed.
//   - C: `musl-gcc -static -O2` over the *.c files of dir, with kiln.h on
//     the include path.
//
// progress, if non-nil, is told each step in a few words. A compiler that
// refuses the source gives an ErrBuild error whose text holds its output;
// cancelling ctx stops the compiler.
func BuildSource(ctx context.Context, dir string, progress func(step string)) ([]byte, error) {
	if progress == nil {
		progress = func(string) {}
	}
	lang, err := Detect(dir)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoSource, err)
	}
	if lang == LangGo {
		if err := checkMainPackage(abs); err != nil {
			return nil, err
		}
	}
	tmp, err := os.MkdirTemp("", "kiln-build-")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBuild, err)
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	progress("copying " + dir)
	if err := copyTree(abs, src, tmp); err != nil {
		return nil, fmt.Errorf("%w: copying the source: %w", ErrBuild, err)
	}
	out := filepath.Join(tmp, "out", "function")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBuild, err)
	}
	b := &sourceBuild{ctx: ctx, dir: dir, abs: abs, tmp: tmp, src: src, out: out, progress: progress}
	if lang == LangGo {
		err = b.goBuild()
	} else {
		err = b.cBuild()
	}
	if err != nil {
		return nil, err
	}
	elf, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("%w: the compiler left no program: %w", ErrBuild, err)
	}
	if err := CheckELF(elf, 0); err != nil {
		return nil, fmt.Errorf("%w: the program built from %s: %w", ErrBuild, dir, err)
	}
	return elf, nil
}

// checkMainPackage refuses a module whose root is not a main package
// before any compiler runs, in words that say so.
func checkMainPackage(dir string) error {
	bctx := build.Default
	bctx.GOOS, bctx.GOARCH, bctx.CgoEnabled = "linux", "amd64", false
	pkg, err := bctx.ImportDir(dir, 0)
	var noGo *build.NoGoError
	switch {
	case errors.As(err, &noGo):
		return fmt.Errorf("%w: %s has a go.mod but no Go files for linux/amd64: put the function's main package there", ErrNoSource, dir)
	case err != nil:
		return fmt.Errorf("%w: %s: %w", ErrBuild, dir, err)
	case pkg.Name != "main":
		return fmt.Errorf("%w: %s holds package %s: a function is a main package (package main with func main)", ErrNoSource, dir, pkg.Name)
	}
	return nil
}

// sourceBuild is one BuildSource call's working state.
type sourceBuild struct {
	ctx      context.Context
	dir      string // as the user named it, for messages
	abs      string // dir, absolute
	tmp      string // scratch root, removed afterwards
	src      string // the copy of dir that gets built
	out      string // where the compiler writes the program
	progress func(string)
}

// goModule is the part of `go mod edit -json` the builder reads.
type goModule struct {
	Go      string
	Require []struct{ Path, Version string }
	Replace []struct {
		Old, New struct{ Path, Version string }
	}
}

func (b *sourceBuild) goBuild() error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("%w: building Go needs the go command on PATH (https://go.dev/dl): %w", ErrBuild, err)
	}
	js, err := b.run(goTool, "mod", "edit", "-json")
	if err != nil {
		return err
	}
	var mod goModule
	if err := json.Unmarshal(js, &mod); err != nil {
		return fmt.Errorf("%w: reading %s/go.mod: %w", ErrBuild, b.dir, err)
	}
	var edits []string
	usesSDK := false
	for _, r := range mod.Require {
		usesSDK = usesSDK || r.Path == sdk.GoModulePath
	}
	for _, r := range mod.Replace {
		old := r.Old.Path
		if r.Old.Version != "" {
			old += "@" + r.Old.Version
		}
		switch {
		case r.Old.Path == sdk.GoModulePath:
			// The user's replace (a checkout, in the examples) gives way
			// to the SDK this kiln carries.
			edits = append(edits, "-dropreplace="+old)
		case r.New.Version == "" && !filepath.IsAbs(r.New.Path):
			// A relative directory would now resolve inside the scratch
			// directory: anchor it where the user meant it.
			edits = append(edits, "-replace="+old+"="+filepath.Join(b.abs, r.New.Path))
		}
	}
	if usesSDK {
		stub := filepath.Join(b.tmp, "kiln-sdk")
		if err := os.MkdirAll(stub, 0o755); err != nil {
			return fmt.Errorf("%w: %w", ErrBuild, err)
		}
		if err := sdk.WriteGoModule(stub, mod.Go); err != nil {
			return fmt.Errorf("%w: %w", ErrBuild, err)
		}
		edits = append(edits, "-replace="+sdk.GoModulePath+"="+stub)
	}
	if len(edits) > 0 {
		if _, err := b.run(goTool, append([]string{"mod", "edit"}, edits...)...); err != nil {
			return err
		}
	}
	b.progress("go build (CGO_ENABLED=0 GOOS=linux GOARCH=amd64)")
	_, err = b.run(goTool, "build", "-trimpath", "-buildvcs=false", "-o", b.out, ".")
	return err
}

func (b *sourceBuild) cBuild() error {
	cc, err := exec.LookPath("musl-gcc")
	if err != nil {
		return fmt.Errorf("%w: building C needs musl-gcc for a static program (Debian: apt-get install musl-tools): %w", ErrBuild, err)
	}
	inc := filepath.Join(b.tmp, "include")
	if err := os.MkdirAll(inc, 0o755); err != nil {
		return fmt.Errorf("%w: %w", ErrBuild, err)
	}
	if err := sdk.WriteCHeader(inc); err != nil {
		return fmt.Errorf("%w: %w", ErrBuild, err)
	}
	files, err := filepath.Glob(filepath.Join(b.src, "*.c"))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBuild, err)
	}
	sort.Strings(files)
	args := []string{"-static", "-O2", "-I", inc, "-o", b.out}
	for _, f := range files {
		// Relative names, so diagnostics read main.c:3, as in the user's tree.
		args = append(args, filepath.Base(f))
	}
	b.progress("musl-gcc -static -O2 " + strings.Join(args[6:], " "))
	_, err = b.run(cc, args...)
	return err
}

// run runs a tool in the copy of the source with the environment of a
// static linux/amd64 build, and returns its standard output. A failure is
// an ErrBuild error carrying the tool's output, trimmed, with the scratch
// directory's path put back to the user's.
func (b *sourceBuild) run(name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(b.ctx, name, args...)
	cmd.Dir = b.src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOWORK=off")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	killGroup(cmd)
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	what := filepath.Base(name)
	if what == "go" {
		what += " " + args[0]
	}
	if ctxErr := b.ctx.Err(); ctxErr != nil {
		return nil, fmt.Errorf("%w: %s: stopped: %w", ErrBuild, b.dir, ctxErr)
	}
	msg := b.trim(stderr.String() + stdout.String())
	if msg == "" {
		msg = err.Error()
	}
	return nil, fmt.Errorf("%w: %s in %s:\n%s", ErrBuild, what, b.dir, msg)
}

// maxOutputLines is how much compiler output an error keeps: enough for
// the first errors (which are the ones that matter), not a whole log.
const maxOutputLines = 40

func (b *sourceBuild) trim(out string) string {
	out = strings.ReplaceAll(out, b.src, b.dir)
	out = shorten(out, b.tmp)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) > maxOutputLines {
		more := len(lines) - maxOutputLines
		lines = append(lines[:maxOutputLines], fmt.Sprintf("… %d more lines", more))
	}
	return strings.Join(lines, "\n")
}

// shorten hides the scratch directory in what a user reads.
func shorten(s, tmp string) string {
	return strings.ReplaceAll(s, tmp, "$KILN_BUILD_TMP")
}

// maxSourceBytes bounds the copy: a function's source is small, and a
// directory named by mistake (a home directory, say) should fail fast
// rather than fill the disk.
const maxSourceBytes = 256 << 20

// copyTree copies the regular files and directories under from to to,
// leaving out skip (the scratch directory, when from contains it).
// Version-control metadata stays behind; symbolic links are followed only
// when they name a regular file, so a link cannot pull a whole tree in.
func copyTree(from, to, skip string) error {
	var total int64
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			if path == skip {
				return filepath.SkipDir
			}
			if rel != "." && (d.Name() == ".git" || d.Name() == ".hg" || d.Name() == ".svn") {
				return filepath.SkipDir
			}
			return os.MkdirAll(dst, 0o755)
		}
		st, err := os.Stat(path)
		if err != nil || !st.Mode().IsRegular() {
			return nil // a dangling link, a socket, a device: not source
		}
		if total += st.Size(); total > maxSourceBytes {
			return fmt.Errorf("%s holds over %d MiB: is it the function's directory?", from, maxSourceBytes>>20)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, st.Mode().Perm()|0o200)
	})
}
