package rolecert

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc/credentials"
)

// Files are a role's TLS files: the CA that signs every role's
// certificate, and the role's own certificate and key.
type Files struct {
	CA, Cert, Key string
}

// Empty reports that none of the files is given.
func (f Files) Empty() bool { return f.CA == "" && f.Cert == "" && f.Key == "" }

// Credentials are a role's loaded certificate and the CA it trusts.
type Credentials struct {
	// Identity is what the role's own certificate says it is.
	Identity Identity
	// NotAfter is when the role's certificate expires.
	NotAfter time.Time

	cert tls.Certificate
	pool *x509.CertPool
}

// Load reads f (every file required) and checks, so that a mistake shows
// at start rather than at the first call, that the certificate is signed
// by the CA, valid now and names a Kiln role.
func Load(f Files) (*Credentials, error) {
	if f.CA == "" || f.Cert == "" || f.Key == "" {
		return nil, fmt.Errorf("%w: give all of the CA certificate, the role's certificate and its key", ErrBadFiles)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFiles, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: no certificate in %s", ErrBadFiles, f.CA)
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFiles, err)
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("%w: %s is not a valid certificate of the CA in %s: %v", ErrBadFiles, f.Cert, f.CA, err)
	}
	id, err := IdentityOf(pair.Leaf)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w (issue it with `kiln ca issue --role ...`)", ErrBadFiles, f.Cert, err)
	}
	return &Credentials{Identity: id, NotAfter: pair.Leaf.NotAfter, cert: pair, pool: pool}, nil
}

// ServerTLS is the configuration of a role's gRPC server: its own
// certificate, and a client's verified against the CA when one is given.
// A client without one still completes the handshake, so that the gRPC
// checks (Interceptors) can answer it Unauthenticated rather than with a
// broken connection; they refuse every call without a verified chain.
func (c *Credentials) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		ClientCAs:    c.pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
	}
}

// ClientTLS is the configuration of a connection to the role want: the
// server's chain is verified against the CA and its certificate must name
// want. The host name is not checked: agents are dialled at addresses
// (pod IPs) no certificate could list in advance, and the identity says
// more than a host name would.
func (c *Credentials) ClientTLS(want Identity) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		// The chain is verified below, against our CA, with the
		// identity in place of the host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: no certificate", ErrWrongPeer)
			}
			inter := x509.NewCertPool()
			for _, ic := range cs.PeerCertificates[1:] {
				inter.AddCert(ic)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.pool, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return err
			}
			got, err := IdentityOf(leaf)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("%w: wanted %s, its certificate says %s", ErrWrongPeer, want, got)
			}
			return nil
		},
	}
}

// Server is ServerTLS as gRPC transport credentials.
func (c *Credentials) Server() credentials.TransportCredentials {
	return credentials.NewTLS(c.ServerTLS())
}

// Client is ClientTLS(want) as gRPC transport credentials.
func (c *Credentials) Client(want Identity) credentials.TransportCredentials {
	return credentials.NewTLS(c.ClientTLS(want))
}
