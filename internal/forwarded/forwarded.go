// Package forwarded decides which client address a request behind a
// reverse proxy comes from. A listener with x_forwarded: true believes
// X-Forwarded-For only from the proxies it trusts
// (x_forwarded_trusted_proxies, loopback by default): anyone who can reach
// the port directly could otherwise pick the address that rate limits and
// logs attribute their requests to.
package forwarded

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Trust is a set of proxy addresses whose X-Forwarded-For is believed.
type Trust struct {
	nets []netip.Prefix
}

// Loopback is the default trust: a proxy on the same host (the router or
// nginx of a fleet started by `ganglion up`) connects from loopback.
func Loopback() Trust {
	return Trust{nets: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
}

// Parse builds a Trust from IP addresses and CIDR ranges. nil means the
// default (Loopback); an empty non-nil list trusts nobody.
func Parse(list []string) (Trust, error) {
	if list == nil {
		return Loopback(), nil
	}
	t := Trust{nets: []netip.Prefix{}}
	for i, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			t.nets = append(t.nets, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Trust{}, fmt.Errorf("[%d]: %q is not an IP address or CIDR range", i, s)
		}
		a = a.Unmap()
		t.nets = append(t.nets, netip.PrefixFrom(a, a.BitLen()))
	}
	return t, nil
}

// Trusts reports whether a is one of the trusted proxies.
func (t Trust) Trusts(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t.nets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Client returns the client address of r: when the peer is a trusted
// proxy, the rightmost X-Forwarded-For entry that is not itself a trusted
// proxy (each proxy appends the address it was connected from, so entries
// left of the first untrusted one may be forged by the client); otherwise
// the peer itself. ok is false when RemoteAddr is not an address (a Unix
// socket, a test request).
func (t Trust) Client(r *http.Request) (addr netip.Addr, ok bool) {
	peer, ok := peerAddr(r.RemoteAddr)
	if !ok || !t.Trusts(peer) {
		return peer, ok
	}
	chain := Chain(r.Header)
	client := peer
	for i := len(chain) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(chain[i])
		if err != nil {
			// Garbage in the chain: nothing left of it can be trusted, and
			// the hop that wrote it is the last one we know.
			break
		}
		client = a.Unmap()
		if !t.Trusts(client) {
			break
		}
	}
	return client, true
}

// TrustedPeer reports whether r arrived straight from a trusted proxy.
func (t Trust) TrustedPeer(r *http.Request) bool {
	peer, ok := peerAddr(r.RemoteAddr)
	return ok && t.Trusts(peer)
}

// Chain lists the X-Forwarded-For entries of every header line, in order.
func Chain(h http.Header) []string {
	var out []string
	for _, line := range h.Values("X-Forwarded-For") {
		for _, e := range strings.Split(line, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}

func peerAddr(remote string) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
