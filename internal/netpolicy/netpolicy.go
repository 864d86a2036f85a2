// Package netpolicy says which network addresses Kiln may connect to on
// someone else's behalf. A caller's async callback URL (and, later, a
// function's egress) names a destination that the platform dials from
// inside its own network: unchecked, that is a server-side request
// forgery reaching the management API on loopback (where, while no API key
// exists, callers may deploy), the cloud's metadata service on
// 169.254.169.254, the private network behind the host, or the other
// roles' ports.
//
// The policy is pure: an address in, a verdict out. It judges resolved
// addresses, so the caller must apply it where the connection is made
// (a net.Dialer's Control hook sees the address actually dialled, after
// DNS), never to a host name: a name can resolve to anything, and to
// something else a second later (DNS rebinding).
package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Sentinel errors. Wrapped with %w; test with errors.Is.
var (
	// ErrDenied: the policy does not let a connection reach the address
	// (a *DeniedError says which address and why).
	ErrDenied = errors.New("netpolicy: address denied")
	// ErrBadPrefix: an allow-list entry is neither a CIDR prefix nor an
	// address.
	ErrBadPrefix = errors.New("netpolicy: bad prefix")
)

// Class is what kind of address an address is, as far as reaching it on
// someone else's behalf goes. Every class but Public is denied unless the
// operator allows it.
type Class int

// Classes of address.
const (
	// Public is an address of the internet at large.
	Public Class = iota
	// Unspecified is 0.0.0.0/8 ("this network", which Linux connects to
	// this host) and ::.
	Unspecified
	// Loopback is 127.0.0.0/8 and ::1: this host.
	Loopback
	// LinkLocal is 169.254.0.0/16 (where clouds serve instance metadata
	// and credentials) and fe80::/10.
	LinkLocal
	// Private is RFC 1918 (10/8, 172.16/12, 192.168/16), IPv6 unique
	// local fc00::/7, the deprecated site-local fec0::/10 and the
	// local-use NAT64 prefix 64:ff9b:1::/48.
	Private
	// Shared is 100.64.0.0/10, the carrier-grade NAT space (RFC 6598):
	// private to a provider's network.
	Shared
	// Multicast is 224.0.0.0/4 and ff00::/8.
	Multicast
	// Reserved is 240.0.0.0/4 (with the broadcast address), IPv6's
	// IPv4-compatible ::/96 and the discard prefix 100::/64: nothing a
	// callback has any business reaching.
	Reserved
	// Own is one of the platform's own addresses (this host's
	// interfaces, where its roles listen), however public.
	Own
	// Invalid is no address at all (the zero netip.Addr).
	Invalid
)

var classNames = [...]string{
	Public:      "public",
	Unspecified: "unspecified",
	Loopback:    "loopback",
	LinkLocal:   "link-local",
	Private:     "private",
	Shared:      "shared (carrier-grade NAT)",
	Multicast:   "multicast",
	Reserved:    "reserved",
	Own:         "one of the platform's own",
	Invalid:     "invalid",
}

// String is the class's name, as used in "a loopback address".
func (c Class) String() string {
	if c < 0 || int(c) >= len(classNames) {
		return fmt.Sprintf("Class(%d)", int(c))
	}
	return classNames[c]
}

// Describe is the class in words, for an error a person reads.
func (c Class) Describe() string {
	switch c {
	case Own:
		return "one of the platform's own addresses"
	case LinkLocal:
		return "a link-local address (where clouds serve instance metadata)"
	case Unspecified, Invalid:
		return "an " + c.String() + " address"
	}
	return "a " + c.String() + " address"
}

// Fixed prefixes, unmapped IPv4 and IPv6 apart. Order matters only in
// that the first match wins; no two overlap.
var (
	v4Classes = []struct {
		p netip.Prefix
		c Class
	}{
		{netip.MustParsePrefix("0.0.0.0/8"), Unspecified},
		{netip.MustParsePrefix("127.0.0.0/8"), Loopback},
		{netip.MustParsePrefix("169.254.0.0/16"), LinkLocal},
		{netip.MustParsePrefix("10.0.0.0/8"), Private},
		{netip.MustParsePrefix("172.16.0.0/12"), Private},
		{netip.MustParsePrefix("192.168.0.0/16"), Private},
		{netip.MustParsePrefix("100.64.0.0/10"), Shared},
		{netip.MustParsePrefix("224.0.0.0/4"), Multicast},
		{netip.MustParsePrefix("240.0.0.0/4"), Reserved},
	}
	v6Classes = []struct {
		p netip.Prefix
		c Class
	}{
		{netip.MustParsePrefix("::/128"), Unspecified},
		{netip.MustParsePrefix("::1/128"), Loopback},
		{netip.MustParsePrefix("::/96"), Reserved}, // IPv4-compatible (deprecated)
		{netip.MustParsePrefix("fe80::/10"), LinkLocal},
		{netip.MustParsePrefix("fec0::/10"), Private}, // site-local (deprecated)
		{netip.MustParsePrefix("fc00::/7"), Private},
		{netip.MustParsePrefix("64:ff9b:1::/48"), Private},
		{netip.MustParsePrefix("100::/64"), Reserved},
		{netip.MustParsePrefix("ff00::/8"), Multicast},
	}
	// Prefixes whose addresses carry an IPv4 address that a translator
	// or tunnel on the path may deliver to: judged by that address.
	nat64 = netip.MustParsePrefix("64:ff9b::/96") // RFC 6052, the last 32 bits
	sixTo = netip.MustParsePrefix("2002::/16")    // 6to4, bits 16..47
)

// Classify says what kind of address a is. IPv4-mapped IPv6 addresses
// (::ffff:127.0.0.1) and those embedding an IPv4 address a translator
// would reach (NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by the IPv4
// address they carry; a zone (fe80::1%eth0) is ignored.
func Classify(a netip.Addr) Class {
	if !a.IsValid() {
		return Invalid
	}
	a = a.WithZone("").Unmap()
	if a.Is4() {
		for _, e := range v4Classes {
			if e.p.Contains(a) {
				return e.c
			}
		}
		return Public
	}
	if c := classify6Embedded(a); c != Public {
		return c
	}
	for _, e := range v6Classes {
		if e.p.Contains(a) {
			return e.c
		}
	}
	return Public
}

// classify6Embedded judges the IPv4 address inside a NAT64 or 6to4
// address; Public for any other address.
func classify6Embedded(a netip.Addr) Class {
	b := a.As16()
	switch {
	case nat64.Contains(a):
		return Classify(netip.AddrFrom4([4]byte(b[12:16])))
	case sixTo.Contains(a):
		return Classify(netip.AddrFrom4([4]byte(b[2:6])))
	}
	return Public
}

// Policy is who may be reached. The zero Policy allows public addresses
// only.
type Policy struct {
	// Allow lists prefixes the operator lets through whatever their class
	// (say 10.1.2.0/24, where the company's webhook receivers live). It
	// wins over every class, Own included: an allowed prefix that holds
	// one of the host's addresses lets through to whatever listens there.
	Allow []netip.Prefix
	// Own are the platform's own addresses (this host's interfaces):
	// denied even when public, unless allowed.
	Own []netip.Addr
}

// DeniedError is the verdict on an address the policy does not let
// through. It matches ErrDenied.
type DeniedError struct {
	Addr  netip.Addr
	Class Class
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("%s is %s", e.Addr, e.Class.Describe())
}

// Is makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }

// Check returns nil when p lets a connection reach a, else a *DeniedError
// saying which class kept it out.
func (p Policy) Check(a netip.Addr) error {
	if a.IsValid() && p.allowed(a) {
		return nil
	}
	c := Classify(a)
	if c == Public && slices.ContainsFunc(p.Own, func(o netip.Addr) bool { return o.WithZone("").Unmap() == a.WithZone("").Unmap() }) {
		c = Own
	}
	if c == Public {
		return nil
	}
	return &DeniedError{Addr: a, Class: c}
}

func (p Policy) allowed(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	for _, pr := range p.Allow {
		if normalize(pr).Contains(a) {
			return true
		}
	}
	return false
}

// normalize turns an IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104) into
// the IPv4 prefix it means, since Check compares unmapped addresses.
func normalize(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return p.Masked()
}

// ParseAllowList reads an operator's allow-list: CIDR prefixes or single
// addresses, separated by commas (spaces around them are ignored), e.g.
// "127.0.0.1/32, 10.1.2.0/24, fd00::/8". The empty string is the empty
// list.
func ParseAllowList(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if a, err := netip.ParseAddr(f); err == nil {
			if a.Zone() != "" {
				return nil, fmt.Errorf("%w: %q: zones are not allowed", ErrBadPrefix, f)
			}
			out = append(out, normalize(netip.PrefixFrom(a, a.BitLen())))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%w: %q: want a CIDR prefix like 10.0.0.0/8 or an address", ErrBadPrefix, f)
		}
		out = append(out, normalize(p))
	}
	return out, nil
}
