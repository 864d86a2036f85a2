package gateway

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The bootstrap gate, request by request: which Host names, page-made
// requests and body types a caller let in without a key may send.
func TestLocalGate(t *testing.T) {
	listening := &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 8080}
	for _, tc := range []struct {
		name, host string
		hdr        map[string]string
		local      net.Addr // the connection's local address; nil: none known
		ok         bool
	}{
		{"ipv4 loopback", "127.0.0.1:8080", nil, nil, true},
		{"other loopback", "127.9.9.9", nil, nil, true},
		{"ipv6 loopback", "[::1]:8080", nil, nil, true},
		{"mapped loopback", "[::ffff:127.0.0.1]:8080", nil, nil, true},
		{"localhost", "localhost:8080", nil, nil, true},
		{"localhost any case, trailing dot", "LocalHost.:8080", nil, nil, true},
		{"the listening address", "10.1.2.3:8080", nil, listening, true},
		{"another address of the machine", "10.1.2.4:8080", nil, listening, false},
		{"a rebinding name", "rebind.example:8080", nil, nil, false},
		{"a name under localhost", "evil.localhost:8080", nil, nil, false},
		{"a name ending in localhost", "notlocalhost:8080", nil, nil, false},
		{"no Host", "", nil, nil, false},
		{"cross-site Origin", "127.0.0.1:8080", map[string]string{"Origin": "https://evil.example"}, nil, false},
		{"same-origin Origin", "127.0.0.1:8080", map[string]string{"Origin": "http://127.0.0.1:8080"}, nil, false},
		{"null Origin", "127.0.0.1:8080", map[string]string{"Origin": "null"}, nil, false},
		{"Sec-Fetch-Site cross-site", "127.0.0.1:8080", map[string]string{"Sec-Fetch-Site": "cross-site"}, nil, false},
		{"Sec-Fetch-Site same-origin", "127.0.0.1:8080", map[string]string{"Sec-Fetch-Site": "same-origin"}, nil, false},
		{"Sec-Fetch-Site none (typed URL)", "127.0.0.1:8080", map[string]string{"Sec-Fetch-Site": "none"}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/system/functions", nil)
			r.Host = tc.host
			for k, v := range tc.hdr {
				r.Header.Set(k, v)
			}
			if tc.local != nil {
				r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, tc.local))
			}
			err := localGate(r)
			if (err == nil) != tc.ok {
				t.Fatalf("localGate: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, errNotLocal) {
				t.Fatalf("refusal %v does not wrap errNotLocal", err)
			}
		})
	}
}

func TestBootstrapContentType(t *testing.T) {
	const deploy, keys = "/system/functions", "/system/keys"
	for _, tc := range []struct {
		method, route, ctype string
		ok                   bool
	}{
		{"POST", deploy, "application/octet-stream", true},
		{"POST", deploy, "multipart/form-data; boundary=x", true},
		{"POST", deploy, "", true},
		{"POST", deploy, "text/plain", false},
		{"POST", deploy, "Text/Plain; charset=utf-8", false},
		{"POST", deploy, "application/x-www-form-urlencoded", false},
		{"POST", deploy, "text/plain;;;garbage", false},
		{"POST", keys, "application/json", true},
		{"POST", keys, "multipart/form-data; boundary=x", false},
		{"POST", keys, "text/plain", false},
		{"PUT", "/system/functions/{name}/aliases/{alias}", "text/plain", false},
		{"GET", deploy, "text/plain", true},
		{"DELETE", "/system/functions/{name}", "", true},
	} {
		r := httptest.NewRequest(tc.method, tc.route, nil)
		if tc.ctype != "" {
			r.Header.Set("Content-Type", tc.ctype)
		}
		err := bootstrapContentType(r, tc.route)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, errUnsupportedBody)) {
			t.Errorf("%s %s %q: %v, want ok=%v", tc.method, tc.route, tc.ctype, err, tc.ok)
		}
	}
}
