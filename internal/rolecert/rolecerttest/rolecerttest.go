// Package rolecerttest makes a cluster CA and role certificates for a test,
// in t.TempDir(), with the very code `kiln ca init` and `kiln ca issue`
// run (internal/rolecert), so the tests' roles speak the mTLS a user's do.
package rolecerttest

import (
	"path/filepath"
	"testing"

	"github.com/kilnfaas/kiln/internal/rolecert"
)

// CA is a test's certificate authority.
type CA struct {
	// Dir holds ca.crt, ca.key and the certificates issued.
	Dir string
}

// New makes a CA in a new temporary directory.
func New(t testing.TB) *CA {
	t.Helper()
	ca := &CA{Dir: t.TempDir()}
	if err := rolecert.Init(ca.Dir); err != nil {
		t.Fatal(err)
	}
	return ca
}

// Files issues a certificate for id (again, if it was issued before) and
// returns the files a role is started with.
func (ca *CA) Files(t testing.TB, id rolecert.Identity) rolecert.Files {
	t.Helper()
	cert, key, err := rolecert.Issue(ca.Dir, rolecert.Request{Identity: id, Hosts: []string{"127.0.0.1", "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	return rolecert.Files{CA: ca.CACert(), Cert: cert, Key: key}
}

// CACert is the path of the CA's certificate.
func (ca *CA) CACert() string { return filepath.Join(ca.Dir, rolecert.CACertFile) }

// Gateway, Scheduler and Agent issue the certificate of a role.
func (ca *CA) Gateway(t testing.TB) rolecert.Files {
	return ca.Files(t, rolecert.Identity{Role: rolecert.RoleGateway})
}

func (ca *CA) Scheduler(t testing.TB) rolecert.Files {
	return ca.Files(t, rolecert.Identity{Role: rolecert.RoleScheduler})
}

func (ca *CA) Agent(t testing.TB, node string) rolecert.Files {
	return ca.Files(t, rolecert.Identity{Role: rolecert.RoleAgent, Node: node})
}

// Credentials loads files, failing the test on an error.
func Credentials(t testing.TB, f rolecert.Files) *rolecert.Credentials {
	t.Helper()
	c, err := rolecert.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
