package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"
)

// dialer opens TCP connections for federation: it resolves hostnames
// itself and checks every address against the IP filter before
// connecting, and again in the socket's Control hook against the address
// actually connected to. Because the address checked is the address
// dialled, a name whose DNS answer changes between a check and the
// connection (DNS rebinding) cannot reach a blocked network.
type dialer struct {
	dns    DNS
	filter IPFilter
	nd     net.Dialer
}

func newDialer(dns DNS, filter IPFilter, connectTimeout time.Duration) *dialer {
	d := &dialer{dns: dns, filter: filter}
	d.nd = net.Dialer{
		Timeout: connectTimeout,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: unparseable address %q", ErrBlockedIP, address)
			}
			if !d.filter.Allowed(ap.Addr()) {
				return fmt.Errorf("%w: %s", ErrBlockedIP, ap.Addr())
			}
			return nil
		},
	}
	return d
}

// dialTarget connects to t, trying each allowed address of a hostname in
// the order DNS gave them.
func (d *dialer) dialTarget(ctx context.Context, t Target) (net.Conn, error) {
	port := strconv.Itoa(t.Port)
	if ip, err := netip.ParseAddr(t.Host); err == nil {
		if !d.filter.Allowed(ip) {
			return nil, fmt.Errorf("connect to %s: %w", t, ErrBlockedIP)
		}
		return d.nd.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), port))
	}
	addrs, err := d.dns.LookupIPAddr(ctx, t.Host)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", t.Host, err)
	}
	var errs []error
	allowed := 0
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !d.filter.Allowed(ip) {
			continue
		}
		allowed++
		conn, err := d.nd.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), port))
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if allowed == 0 {
		if len(addrs) == 0 {
			return nil, fmt.Errorf("look up %s: no addresses", t.Host)
		}
		return nil, fmt.Errorf("connect to %s: every address of %s is blocked: %w", t, t.Host, ErrBlockedIP)
	}
	return nil, fmt.Errorf("connect to %s: %w", t, errors.Join(errs...))
}

// DialContext is for http.Transport (the .well-known fetches).
func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: bad port", addr)
	}
	return d.dialTarget(ctx, Target{Host: host, Port: port})
}
