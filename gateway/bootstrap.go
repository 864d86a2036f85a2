package gateway

import (
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// The bootstrap gate. While no API key exists the gateway lets in callers
// on its own machine on their address alone (auth.check), and a web
// browser on that machine is such a caller: any page it shows may send
// requests to 127.0.0.1 (cross-site request forgery), and a page whose
// name the attacker re-points at 127.0.0.1 after it loaded may even read
// the answers (DNS rebinding). So a caller let in on its address must
// also pass localGate:
//
//   - Host names the gateway locally: "localhost", a loopback address, or
//     the address the connection arrived at. A rebinding page's requests
//     carry the attacker's name.
//   - The request was not made by a web page: no Origin header, and
//     Sec-Fetch-Site absent or "none" (the user typed the URL). Same-origin
//     pages are refused too: the gateway serves no pages of its own, and a
//     public function's answers share its origin.
//
// and a change (any method but GET, HEAD, OPTIONS) to the management API
// must not carry a body type a form or a no-cors fetch sends without the
// browser asking first (bootstrapContentType): a second line for browsers
// that send neither Origin nor Sec-Fetch-Site.
//
// A request with a valid key passes none of this: a browser never attaches
// a bearer key by itself, so a key is proof the caller meant it.

// errNotLocal: a caller let in without a key (on its address, while no
// key exists) failed the bootstrap gate. Its wrappings say why and what
// to do; the answer is 403 (outcome.Forbidden), or 415 for a body type.
var errNotLocal = errors.New("refused while no API key exists")

// closeTheGate is how every refusal of the gate ends: the two ways through.
const closeTheGate = "use the kiln CLI or curl on this machine with http://127.0.0.1:PORT, " +
	"or create an API key (`kiln keys create admin --save`) and send it as \"Authorization: Bearer KEY\""

// localGate checks r, a caller let in on its loopback address while no key
// exists, against DNS rebinding and requests made by web pages.
func localGate(r *http.Request) error {
	if !localHost(r) {
		return fmt.Errorf("%w: Host %q is not a name of this machine (localhost, a loopback address or the address the gateway listens on), "+
			"as when a web page re-points its own name at this machine (DNS rebinding): %s", errNotLocal, r.Host, closeTheGate)
	}
	if o := r.Header.Get("Origin"); o != "" {
		return fmt.Errorf("%w: the request comes from a web page (Origin %q), and any page the browser shows could send it "+
			"(cross-site request forgery): %s", errNotLocal, o, closeTheGate)
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "none" {
		return fmt.Errorf("%w: the request comes from a web page (Sec-Fetch-Site %q), and any page the browser shows could send it "+
			"(cross-site request forgery): %s", errNotLocal, s, closeTheGate)
	}
	return nil
}

// localHost reports whether r's Host names this machine: "localhost", a
// loopback address, or the local address of r's connection. A port is
// not checked: a rebinding page cannot choose the name, whatever the port.
func localHost(r *http.Request) bool {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return true
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	ap, err := netip.ParseAddrPort(local.String())
	return err == nil && ap.Addr().Unmap() == ip
}

// simpleBody are the body types a browser sends cross-site without asking
// the server first (the CORS-safelisted Content-Types).
var simpleBody = map[string]bool{"text/plain": true, "application/x-www-form-urlencoded": true, "multipart/form-data": true}

// bootstrapContentType refuses a change to the management API, made
// without a key, whose body type a form or a no-cors fetch can send:
// every endpoint takes JSON except the deploy (route), which takes the
// program raw (application/octet-stream) or as multipart/form-data, as
// `curl -F binary=@prog` sends it.
func bootstrapContentType(r *http.Request, route string) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		mt, _, _ = strings.Cut(strings.ToLower(strings.TrimSpace(ct)), ";")
	}
	deploy := r.Method == http.MethodPost && route == "/system/functions"
	if !simpleBody[mt] || (deploy && mt == "multipart/form-data") {
		return nil
	}
	want := "application/json"
	if deploy {
		want = "application/octet-stream (the program as the body) or multipart/form-data"
	}
	return fmt.Errorf("%w: Content-Type %q is one a web page may send to any site without the browser asking first, "+
		"so the management API refuses it on changes without a key: send %s (the kiln CLI does), or send an API key",
		errUnsupportedBody, mt, want)
}

// errUnsupportedBody: a change without a key in a body type web pages may
// send; answered 415.
var errUnsupportedBody = fmt.Errorf("%w: unsupported body type", errNotLocal)
