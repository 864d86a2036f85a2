// Package rolecert is how Kiln's roles know each other: a certificate
// authority the operator keeps (`kiln ca init`), one certificate per role
// issued by it (`kiln ca issue`), the role — and for an agent its node
// name — carried in the certificate as a URI SAN (kiln://gateway,
// kiln://scheduler, kiln://agent/NODE), and mutual TLS between the roles
// on those certificates. A peer is trusted for what its certificate says
// it is, never for where it connects from (issue 13, finding 3): the gRPC
// checks that read the verified certificate and decide which role may
// call which method are in grpc.go.
//
// Keys are ECDSA P-256; everything is the standard library's crypto/x509.
package rolecert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// The roles a certificate may name.
const (
	RoleGateway   = "gateway"
	RoleScheduler = "scheduler"
	RoleAgent     = "agent"
)

// File names in a CA directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Validity of what Init and Issue make. A role certificate outlives a
// release cycle by far; renewing one is `kiln ca issue` again and a
// restart of the role.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	CertValidity = 2 * 365 * 24 * time.Hour
)

// Sentinel errors.
var (
	// ErrExists: Init would overwrite a CA.
	ErrExists = errors.New("rolecert: a CA exists there already")
	// ErrBadRequest: Issue was asked for something it cannot make.
	ErrBadRequest = errors.New("rolecert: bad certificate request")
	// ErrBadFiles: the CA, certificate or key files cannot be used.
	ErrBadFiles = errors.New("rolecert: unusable TLS files")
	// ErrNoIdentity: a certificate names no Kiln role.
	ErrNoIdentity = errors.New("rolecert: the certificate names no Kiln role")
	// ErrWrongPeer: the peer's certificate is valid but names another
	// role or node than the one this connection is for.
	ErrWrongPeer = errors.New("rolecert: the peer is not who this connection is for")
)

// Identity is who a certificate says its holder is.
type Identity struct {
	Role string // RoleGateway, RoleScheduler or RoleAgent
	Node string // an agent's node name; "" for the other roles
}

// URI is the URI SAN that carries id: kiln://ROLE or kiln://agent/NODE.
func (id Identity) URI() *url.URL {
	u := &url.URL{Scheme: "kiln", Host: id.Role}
	if id.Node != "" {
		u.Path = "/" + id.Node
	}
	return u
}

func (id Identity) String() string { return id.URI().String() }

// nodeName is what a node name may be: a host name's characters, so that
// it fits a URI path and a file name unescaped.
var nodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

func (id Identity) validate() error {
	switch id.Role {
	case RoleGateway, RoleScheduler:
		if id.Node != "" {
			return fmt.Errorf("%w: only an agent certificate names a node", ErrBadRequest)
		}
	case RoleAgent:
		if !nodeName.MatchString(id.Node) {
			return fmt.Errorf("%w: an agent certificate needs a node name of letters, digits, '.', '_' and '-' (got %q)", ErrBadRequest, id.Node)
		}
	default:
		return fmt.Errorf("%w: role %q: want %s, %s or %s", ErrBadRequest, id.Role, RoleGateway, RoleScheduler, RoleAgent)
	}
	return nil
}

// IdentityOf reads the Kiln identity a certificate carries. It does not
// verify the certificate: callers read the identity of a verified chain's
// leaf only.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	for _, u := range cert.URIs {
		if u.Scheme != "kiln" {
			continue
		}
		id := Identity{Role: u.Host, Node: strings.TrimPrefix(u.Path, "/")}
		if err := id.validate(); err != nil {
			return Identity{}, fmt.Errorf("%w: %s", ErrNoIdentity, u)
		}
		return id, nil
	}
	return Identity{}, ErrNoIdentity
}

// Fingerprint is the SHA-256 of a certificate's DER: what the scheduler
// holds a node's name under, so that a second certificate for the same
// name cannot take it over while the first is connected.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// CertFiles names a role's certificate and key in a CA directory:
// gateway, scheduler, agent-NODE (.crt, .key).
func CertFiles(dir string, id Identity) (cert, key string) {
	base := id.Role
	if id.Node != "" {
		base += "-" + id.Node
	}
	return filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
}

// Init makes a CA in dir (created 0700 if missing): ca.crt, and ca.key
// readable by its owner only. It refuses to overwrite an existing CA:
// every certificate issued by it would stop being trusted.
func Init(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: %v", ErrBadFiles, err)
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%w: %s", ErrExists, p)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Kiln CA", Organization: []string{"Kiln"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(certPath, keyPath, der, key)
}

// Request is what Issue makes a certificate for.
type Request struct {
	Identity
	// Hosts are DNS names and IP addresses added as SANs, for tools that
	// check a host name. Kiln itself checks the identity, not the host:
	// agents are dialled at addresses (pod IPs) nobody knows in advance.
	Hosts []string
	// Validity; 0 → CertValidity.
	Validity time.Duration
	// OutDir, when set, receives the certificate, its key and a copy of
	// the CA's certificate (ca.crt): everything the role needs and
	// nothing else, ready to mount into it. "": the CA's directory.
	OutDir string
}

// Issue signs a certificate for r with the CA in dir and writes it and its
// key (0600) to the files CertFiles names in r.OutDir (else dir),
// replacing older ones. It returns their paths.
func Issue(dir string, r Request) (certPath, keyPath string, err error) {
	if err := r.Identity.validate(); err != nil {
		return "", "", err
	}
	ca, caKey, err := loadCA(dir)
	if err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	if r.Validity == 0 {
		r.Validity = CertValidity
	}
	now := time.Now()
	cn := r.Role
	if r.Node != "" {
		cn += " " + r.Node
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "kiln " + cn, Organization: []string{"Kiln"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(r.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Every role is a client, and scheduler and agents serve too.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{r.Identity.URI()},
	}
	for _, h := range r.Hosts {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	out := dir
	if r.OutDir != "" {
		out = r.OutDir
		if err := os.MkdirAll(out, 0o700); err != nil {
			return "", "", fmt.Errorf("%w: %v", ErrBadFiles, err)
		}
		caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
		if err := writeFile(filepath.Join(out, CACertFile), caPEM, 0o644); err != nil {
			return "", "", err
		}
	}
	certPath, keyPath = CertFiles(out, r.Identity)
	return certPath, keyPath, writePair(certPath, keyPath, der, key)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: the CA in %s (make one with `kiln ca init`): %v", ErrBadFiles, dir, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%w: the CA key in %s is not ECDSA", ErrBadFiles, dir)
	}
	if !pair.Leaf.IsCA {
		return nil, nil, fmt.Errorf("%w: %s is not a CA certificate", ErrBadFiles, filepath.Join(dir, CACertFile))
	}
	return pair.Leaf, key, nil
}

// writePair writes a certificate (0644) and its key (0600, never more:
// the file is created with that mode and chmodded if it existed).
func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return writeFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadFiles, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("%w: %v", ErrBadFiles, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("%w: %v", ErrBadFiles, err)
	}
	return f.Close()
}
