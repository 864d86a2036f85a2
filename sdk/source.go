// Package sdk carries the sources of Kiln's SDKs inside the kiln binary, so
// that building a user's function (package builder) needs no checkout of
// this repository: the Go SDK becomes a stand-alone module the user's
// go.mod is pointed at, and the C SDK's header goes on the include path.
package sdk

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The embed patterns take the test files too; WriteGoModule leaves them out.
//
//go:embed go/*.go
var goFiles embed.FS

//go:embed c/kiln.h
var cHeader []byte

// GoModulePath is the import path of the module that holds the Go SDK.
const GoModulePath = "github.com/kilnfaas/kiln"

// GoPackageDir is the Go SDK's directory inside that module.
const GoPackageDir = "sdk/go"

// WriteGoModule writes a module named GoModulePath into dir (which must
// exist) holding the Go SDK and nothing else, with no requirements: a
// function built against it needs no module but its own. goVersion is the
// go directive to declare ("" for none); declaring the user's own version
// keeps the stub from demanding a newer toolchain than the user's module.
func WriteGoModule(dir, goVersion string) error {
	mod := "module " + GoModulePath + "\n"
	if goVersion != "" {
		mod += "\ngo " + goVersion + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644); err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	pkg := filepath.Join(dir, filepath.FromSlash(GoPackageDir))
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	names, err := GoFiles()
	if err != nil {
		return err
	}
	for _, name := range names {
		b, err := goFiles.ReadFile("go/" + name)
		if err != nil {
			return fmt.Errorf("sdk: %w", err)
		}
		if err := os.WriteFile(filepath.Join(pkg, name), b, 0o644); err != nil {
			return fmt.Errorf("sdk: %w", err)
		}
	}
	return nil
}

// GoFiles lists the Go SDK's source files (tests excluded).
func GoFiles() ([]string, error) {
	entries, err := fs.ReadDir(goFiles, "go")
	if err != nil {
		return nil, fmt.Errorf("sdk: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), "_test.go") {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// WriteCHeader writes kiln.h, the C SDK, into dir.
func WriteCHeader(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "kiln.h"), cHeader, 0o644); err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	return nil
}
