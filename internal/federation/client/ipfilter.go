package client

import (
	"errors"
	"net/netip"
)

// ErrBlockedIP means a connection would reach an address that
// federation_ip_range_blacklist (or ip_range_blacklist) forbids.
var ErrBlockedIP = errors.New("address blocked by the federation IP range blacklist")

// IPFilter decides which addresses outbound federation connections may
// reach: an address in Allow may be reached even when it is in Block. The
// unspecified addresses (0.0.0.0, ::) reach the local host on many systems
// and are always refused, as in Synapse.
type IPFilter struct {
	Block, Allow []netip.Prefix
}

// Allowed reports whether ip may be connected to. IPv4-mapped IPv6
// addresses are checked as the IPv4 address they carry, so
// ::ffff:127.0.0.1 cannot slip past 127.0.0.0/8.
func (f IPFilter) Allowed(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	if !ip.IsValid() || ip.IsUnspecified() {
		return false
	}
	for _, p := range f.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	for _, p := range f.Block {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}
