package config_test

import (
	"crypto/x509"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"ganglion/internal/testutil/testca"
)

func blocked(block, allow []netip.Prefix, ip string) bool {
	a := netip.MustParseAddr(ip)
	for _, p := range allow {
		if p.Contains(a) {
			return false
		}
	}
	for _, p := range block {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func TestFederationDefaults(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain})
	if !cfg.FederationVerifiesCertificates() || cfg.FederationCAPool() != nil || cfg.FederationDomains() != nil {
		t.Fatalf("defaults: verify %v, CA pool %v, whitelist %v", cfg.FederationVerifiesCertificates(),
			cfg.FederationCAPool(), cfg.FederationDomains())
	}
	block, allow := cfg.FederationIPRanges()
	for _, ip := range []string{"127.0.0.1", "10.1.2.3", "172.31.0.1", "192.168.1.1", "100.64.0.1", "169.254.1.1",
		"224.0.0.1", "::1", "fe80::1", "fd00::1", "2001:db8::1", "ff02::1", "192.0.2.1", "198.18.0.1"} {
		if !blocked(block, allow, ip) {
			t.Errorf("%s not blocked by default", ip)
		}
	}
	for _, ip := range []string{"8.8.8.8", "2606:4700::1111"} {
		if blocked(block, allow, ip) {
			t.Errorf("public %s blocked by default", ip)
		}
	}
}

func TestFederationIPRanges(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "ip_range_blacklist: ['10.0.0.0/8']\nip_range_whitelist: ['10.1.0.0/16', '127.0.0.1']\n"})
	block, allow := cfg.FederationIPRanges()
	if !blocked(block, allow, "10.2.0.1") || blocked(block, allow, "10.1.0.1") || blocked(block, allow, "127.0.0.1") {
		t.Fatalf("ip_range_blacklist/whitelist: block %v allow %v", block, allow)
	}
	// The legacy key wins, and takes no exceptions (as in Synapse).
	cfg = mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "federation_ip_range_blacklist: ['127.0.0.0/8']\nip_range_whitelist: ['127.0.0.1']\n"})
	block, allow = cfg.FederationIPRanges()
	if !blocked(block, allow, "127.0.0.1") || blocked(block, allow, "10.0.0.1") {
		t.Fatalf("federation_ip_range_blacklist: block %v allow %v", block, allow)
	}
	// An empty list blocks nothing (tests on loopback use it).
	cfg = mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "ip_range_blacklist: []\n"})
	if block, allow = cfg.FederationIPRanges(); blocked(block, allow, "127.0.0.1") {
		t.Fatal("empty ip_range_blacklist blocks loopback")
	}
}

func TestFederationConfigRefused(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ yaml, path string }{
		{"ip_range_blacklist: ['10.0.0.0/33']\n", "ip_range_blacklist[0]"},
		{"ip_range_whitelist: ['x']\n", "ip_range_whitelist[0]"},
		{"federation_ip_range_blacklist: ['1.2.3']\n", "federation_ip_range_blacklist[0]"},
		{"federation_domain_whitelist: ['ok.example', 'not ok']\n", "federation_domain_whitelist[1]"},
		{"federation_custom_ca_list: []\n", "federation_custom_ca_list"},
		{"federation_custom_ca_list: ['" + filepath.Join(dir, "missing.pem") + "']\n", "federation_custom_ca_list[0]"},
		{"federation_custom_ca_list: ['" + garbage + "']\n", "federation_custom_ca_list[0]"},
	} {
		paths := loadProblems(t, [2]string{"hs.yaml", minimalMain + tc.yaml})
		if !slices.Equal(paths, []string{tc.path}) {
			t.Errorf("%s: problems %v, want [%s]", tc.yaml, paths, tc.path)
		}
	}
	ca := testca.New(t).WriteCA(t, dir)
	paths := loadProblems(t, [2]string{"hs.yaml", minimalMain + "federation_verify_certificates: false\nfederation_custom_ca_list: ['" + ca + "']\n"})
	if !slices.Equal(paths, []string{"federation_custom_ca_list"}) {
		t.Errorf("custom CAs without verification: problems %v", paths)
	}
}

func TestFederationCustomCAList(t *testing.T) {
	dir := t.TempDir()
	ca := testca.New(t)
	caFile := ca.WriteCA(t, dir)
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "federation_custom_ca_list: ['" + caFile + "']\n" +
		"federation_domain_whitelist: [a.example, 'b.example:8448']\n"})
	pool := cfg.FederationCAPool()
	if pool == nil {
		t.Fatal("no CA pool loaded")
	}
	leaf := ca.Issue(t, "x.test")
	cert, _ := x509.ParseCertificate(leaf.Certificate[0])
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "x.test"}); err != nil {
		t.Fatalf("certificate of the custom CA not trusted: %v", err)
	}
	if d := cfg.FederationDomains(); len(d) != 2 || !d["a.example"] || !d["b.example:8448"] {
		t.Fatalf("whitelist %v", d)
	}
	// An empty whitelist means nobody, not everybody.
	cfg = mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "federation_domain_whitelist: []\n"})
	if d := cfg.FederationDomains(); d == nil || len(d) != 0 {
		t.Fatalf("empty whitelist became %v", d)
	}
}
