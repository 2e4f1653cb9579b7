package config

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"os"
)

// DefaultIPRangeBlacklist is Synapse's default ip_range_blacklist: private,
// loopback, link-local, shared, documentation, benchmarking and multicast
// ranges, which a federation request (whose destination any remote user
// can choose) must not reach.
func DefaultIPRangeBlacklist() []string {
	return []string{
		"127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24",
		"169.254.0.0/16", "192.88.99.0/24", "198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24",
		"203.0.113.0/24", "224.0.0.0/4", "::1/128", "fe80::/10", "fc00::/7", "2001:db8::/32", "ff00::/8", "fec0::/10",
	}
}

// FederationVerifiesCertificates is federation_verify_certificates
// (default true).
func (c *Config) FederationVerifiesCertificates() bool {
	return c.FederationVerifyCertificates == nil || *c.FederationVerifyCertificates
}

// ProfileLookupOverFederation is allow_profile_lookup_over_federation
// (default true): whether other servers may query local users' profiles.
func (c *Config) ProfileLookupOverFederation() bool {
	return c.AllowProfileLookupOverFederation == nil || *c.AllowProfileLookupOverFederation
}

// FederationCAPool is the pool of federation_custom_ca_list as Load read
// it, or nil for the system roots. As in Synapse, the list replaces the
// system roots rather than adding to them.
func (c *Config) FederationCAPool() *x509.CertPool { return c.federationCAs }

// FederationDomains is federation_domain_whitelist as a set, or nil when
// every server may federate.
func (c *Config) FederationDomains() map[string]bool {
	if c.FederationDomainWhitelist == nil {
		return nil
	}
	m := make(map[string]bool, len(c.FederationDomainWhitelist))
	for _, d := range c.FederationDomainWhitelist {
		m[d] = true
	}
	return m
}

// FederationIPRanges are the ranges outbound federation connections may
// not reach (block) and the exceptions (allow), as Synapse computes them:
// the legacy federation_ip_range_blacklist, when given, wins and takes no
// exceptions; otherwise ip_range_blacklist (default: the private ranges)
// with ip_range_whitelist. Entries that do not parse are left out
// (Validate reports them).
func (c *Config) FederationIPRanges() (block, allow []netip.Prefix) {
	parse := func(list []string) []netip.Prefix {
		out := make([]netip.Prefix, 0, len(list))
		for _, s := range list {
			if p, err := ParsePrefix(s); err == nil {
				out = append(out, p)
			}
		}
		return out
	}
	if c.FederationIPRangeBlacklist != nil {
		return parse(c.FederationIPRangeBlacklist), nil
	}
	bl := []string(c.IPRangeBlacklist)
	if bl == nil {
		bl = DefaultIPRangeBlacklist()
	}
	return parse(bl), parse(c.IPRangeWhitelist)
}

func (c *Config) validateFederation(ps *problems) {
	for i, d := range c.FederationDomainWhitelist {
		if err := checkServerName(d); err != nil {
			ps.add(fmt.Sprintf("federation_domain_whitelist[%d]", i), "%v", err)
		}
	}
	for key, list := range map[string]StringList{"federation_ip_range_blacklist": c.FederationIPRangeBlacklist,
		"ip_range_blacklist": c.IPRangeBlacklist, "ip_range_whitelist": c.IPRangeWhitelist} {
		for i, r := range list {
			if _, err := ParsePrefix(r); err != nil {
				ps.add(fmt.Sprintf("%s[%d]", key, i), "invalid IP range %q: %v", r, err)
			}
		}
	}
	if c.FederationCustomCAList != nil && len(c.FederationCustomCAList) == 0 {
		// As Synapse: an empty list would trust nobody.
		ps.add("federation_custom_ca_list", "specified without any certificate files")
	}
	if c.FederationCustomCAList != nil && !c.FederationVerifiesCertificates() {
		ps.add("federation_custom_ca_list", "has no effect with federation_verify_certificates: false")
	}
}

// loadFederationCAs reads federation_custom_ca_list (PEM files), so a bad
// file stops the start with its key instead of failing every request.
func (c *Config) loadFederationCAs() []Problem {
	if len(c.FederationCustomCAList) == 0 {
		return nil
	}
	pool := x509.NewCertPool()
	var problems []Problem
	for i, path := range c.FederationCustomCAList {
		key := fmt.Sprintf("federation_custom_ca_list[%d]", i)
		data, err := os.ReadFile(path)
		if err != nil {
			problems = append(problems, Problem{Path: key, Message: fmt.Sprintf("read custom CA certificate: %v", err)})
			continue
		}
		if !pool.AppendCertsFromPEM(data) {
			problems = append(problems, Problem{Path: key, Message: fmt.Sprintf("%s holds no PEM certificate", path)})
		}
	}
	if len(problems) == 0 {
		c.federationCAs = pool
	}
	return problems
}
