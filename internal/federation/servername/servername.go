// Package servername parses Matrix server names (the spec's appendix
// "Server Name"): a DNS name, an IPv4 literal or a bracketed IPv6 literal,
// optionally followed by ":port". Federation code on both sides needs the
// parts: the resolver to decide how to find a server, the request
// authenticator to check an origin before fetching its keys.
package servername

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Name is a parsed server name.
type Name struct {
	// Host is the hostname or the IP literal, without brackets.
	Host string
	// Port is the explicit port, or 0 when the name has none.
	Port int
	// IP is the address when Host is an IP literal.
	IP netip.Addr
}

// IsIP reports whether the host is an IP literal.
func (n Name) IsIP() bool { return n.IP.IsValid() }

// HostPort is Host with Port when one was given, bracketing IPv6 literals:
// the form of the Host header for an IP literal or an explicit port.
func (n Name) HostPort() string {
	h := n.Host
	if n.IP.Is6() {
		h = "[" + h + "]"
	}
	if n.Port == 0 {
		return h
	}
	return h + ":" + strconv.Itoa(n.Port)
}

// maxLen is the spec's limit on a server name (255 characters).
const maxLen = 255

// Parse checks name against the grammar. Ports must be 1–65535 (0 is not a
// port anyone listens on, and lets the federation client use it to mean
// "no port").
func Parse(name string) (Name, error) {
	bad := func(why string) (Name, error) {
		return Name{}, fmt.Errorf("invalid server name %q: %s", name, why)
	}
	if name == "" {
		return bad("empty")
	}
	if len(name) > maxLen {
		return bad("longer than 255 characters")
	}
	host, portStr, hasPort := name, "", false
	if strings.HasPrefix(name, "[") {
		end := strings.IndexByte(name, ']')
		if end < 0 {
			return bad("unclosed [")
		}
		host = name[1:end]
		rest := name[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return bad("junk after ]")
			}
			portStr, hasPort = rest[1:], true
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return bad("not an IPv6 literal inside []")
		}
		n := Name{Host: host, IP: ip}
		return withPort(n, portStr, hasPort, bad)
	}
	if i := strings.LastIndexByte(name, ':'); i >= 0 {
		host, portStr, hasPort = name[:i], name[i+1:], true
	}
	if host == "" {
		return bad("empty host")
	}
	n := Name{Host: host}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Is4() {
			return bad("IPv6 literals must be in []")
		}
		n.IP = ip
		return withPort(n, portStr, hasPort, bad)
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return bad("hostname has a character other than letters, digits, '-' and '.'")
		}
	}
	return withPort(n, portStr, hasPort, bad)
}

func withPort(n Name, portStr string, hasPort bool, bad func(string) (Name, error)) (Name, error) {
	if !hasPort {
		return n, nil
	}
	if portStr == "" || len(portStr) > 5 || strings.Trim(portStr, "0123456789") != "" {
		return bad("port is not a number")
	}
	p, _ := strconv.Atoi(portStr)
	if p < 1 || p > 65535 {
		return bad("port out of range")
	}
	n.Port = p
	return n, nil
}

// Valid reports whether name parses.
func Valid(name string) bool {
	_, err := Parse(name)
	return err == nil
}
