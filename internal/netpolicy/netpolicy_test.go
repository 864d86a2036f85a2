package netpolicy

import (
	"errors"
	"net/netip"
	"testing"
)

// Every address → allowed or denied, and why, under the default policy
// (nothing allowed, one public own address) and under an allow-list.
func TestCheck(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::7")}
	deflt := Policy{Own: own}
	allow := Policy{Own: own, Allow: mustList(t, "127.0.0.1, 10.1.2.0/24, ::ffff:192.168.7.0/120, fd00:1::/32, 203.0.113.7/32")}
	cases := []struct {
		addr   string
		policy Policy
		want   Class // Public: allowed
	}{
		// Public, v4 and v6.
		{"8.8.8.8", deflt, Public},
		{"1.1.1.1", deflt, Public},
		{"2606:4700::1111", deflt, Public},
		{"172.32.0.1", deflt, Public},  // just past 172.16/12
		{"100.128.0.1", deflt, Public}, // just past 100.64/10
		{"64:ff9b::808:808", deflt, Public},
		{"2002:808:808::1", deflt, Public},

		// Loopback in every spelling.
		{"127.0.0.1", deflt, Loopback},
		{"127.255.255.254", deflt, Loopback},
		{"::1", deflt, Loopback},
		{"::ffff:127.0.0.1", deflt, Loopback},
		{"64:ff9b::7f00:1", deflt, Loopback},
		{"2002:7f00:1::", deflt, Loopback},

		// Unspecified: Linux connects 0.0.0.0 (and 0/8) to this host.
		{"0.0.0.0", deflt, Unspecified},
		{"0.1.2.3", deflt, Unspecified},
		{"::", deflt, Unspecified},
		{"::ffff:0.0.0.0", deflt, Unspecified},

		// Link-local: the cloud's metadata service.
		{"169.254.169.254", deflt, LinkLocal},
		{"::ffff:169.254.169.254", deflt, LinkLocal},
		{"fe80::1", deflt, LinkLocal},
		{"fe80::1%eth0", deflt, LinkLocal},

		// Private.
		{"10.0.0.1", deflt, Private},
		{"172.16.0.1", deflt, Private},
		{"172.31.255.255", deflt, Private},
		{"192.168.1.1", deflt, Private},
		{"::ffff:10.0.0.1", deflt, Private},
		{"fc00::1", deflt, Private},
		{"fd12:3456::1", deflt, Private},
		{"fec0::1", deflt, Private},
		{"64:ff9b:1::a00:1", deflt, Private},
		{"64:ff9b::a00:1", deflt, Private},

		// Carrier-grade NAT, multicast, reserved.
		{"100.64.0.1", deflt, Shared},
		{"100.127.255.255", deflt, Shared},
		{"224.0.0.1", deflt, Multicast},
		{"239.255.255.250", deflt, Multicast},
		{"ff02::1", deflt, Multicast},
		{"::ffff:224.0.0.1", deflt, Multicast},
		{"240.0.0.1", deflt, Reserved},
		{"255.255.255.255", deflt, Reserved},
		{"::7f00:1", deflt, Reserved}, // IPv4-compatible
		{"100::1", deflt, Reserved},

		// The platform's own public addresses.
		{"203.0.113.7", deflt, Own},
		{"::ffff:203.0.113.7", deflt, Own},
		{"2001:db8::7", deflt, Own},
		{"203.0.113.8", deflt, Public},

		// The operator's allow-list wins, in any spelling of the address;
		// what it does not name stays denied.
		{"127.0.0.1", allow, Public},
		{"::ffff:127.0.0.1", allow, Public},
		{"127.0.0.2", allow, Loopback},
		{"::1", allow, Loopback},
		{"10.1.2.200", allow, Public},
		{"10.1.3.1", allow, Private},
		{"192.168.7.9", allow, Public}, // named as ::ffff:192.168.7.0/120
		{"192.168.8.9", allow, Private},
		{"fd00:1::5", allow, Public},
		{"fd00:2::5", allow, Private},
		{"203.0.113.7", allow, Public},
		{"169.254.169.254", allow, LinkLocal},
	}
	for _, c := range cases {
		a := netip.MustParseAddr(c.addr)
		err := c.policy.Check(a)
		var de *DeniedError
		switch {
		case c.want == Public && err != nil:
			t.Errorf("%s: denied (%v), want allowed", c.addr, err)
		case c.want != Public && !errors.As(err, &de):
			t.Errorf("%s: %v, want denied as %s", c.addr, err, c.want)
		case c.want != Public && (de.Class != c.want || !errors.Is(err, ErrDenied) || de.Addr != a):
			t.Errorf("%s: denied as %s (%v), want %s", c.addr, de.Class, err, c.want)
		}
	}
}

func TestCheckInvalid(t *testing.T) {
	err := Policy{Allow: mustList(t, "0.0.0.0/0, ::/0")}.Check(netip.Addr{})
	var de *DeniedError
	if !errors.As(err, &de) || de.Class != Invalid {
		t.Fatalf("zero address: %v", err)
	}
}

func TestDeniedErrorSaysWhy(t *testing.T) {
	err := Policy{}.Check(netip.MustParseAddr("169.254.169.254"))
	if got, want := err.Error(), "169.254.169.254 is a link-local address (where clouds serve instance metadata)"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	err = Policy{Own: []netip.Addr{netip.MustParseAddr("198.51.100.1")}}.Check(netip.MustParseAddr("198.51.100.1"))
	if got, want := err.Error(), "198.51.100.1 is one of the platform's own addresses"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}

func TestParseAllowList(t *testing.T) {
	cases := []struct {
		in   string
		want []string
		bad  bool
	}{
		{"", nil, false},
		{" , ", nil, false},
		{"127.0.0.1", []string{"127.0.0.1/32"}, false},
		{"10.1.2.3/24, ::1", []string{"10.1.2.0/24", "::1/128"}, false}, // masked
		{"::ffff:10.0.0.0/104", []string{"10.0.0.0/8"}, false},
		{"::ffff:10.0.0.1", []string{"10.0.0.1/32"}, false},
		{"localhost", nil, true},
		{"10.0.0.0/33", nil, true},
		{"fe80::1%eth0", nil, true},
		{"10.0.0.0/8;192.168.0.0/16", nil, true},
	}
	for _, c := range cases {
		got, err := ParseAllowList(c.in)
		if c.bad {
			if !errors.Is(err, ErrBadPrefix) {
				t.Errorf("%q: %v, want ErrBadPrefix", c.in, err)
			}
			continue
		}
		if err != nil || len(got) != len(c.want) {
			t.Errorf("%q: %v %v, want %v", c.in, got, err, c.want)
			continue
		}
		for i := range got {
			if got[i].String() != c.want[i] {
				t.Errorf("%q: %v, want %v", c.in, got, c.want)
			}
		}
	}
}

func mustList(t *testing.T, s string) []netip.Prefix {
	t.Helper()
	l, err := ParseAllowList(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
