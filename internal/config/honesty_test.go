package config_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"ganglion/internal/config"
)

// problemPaths loads the files and returns the key paths of the problems.
func loadProblems(t *testing.T, files ...[2]string) []string {
	t.Helper()
	_, err := config.Load(writeFiles(t, files...), nil)
	var ve *config.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a *ValidationError", err)
	}
	var out []string
	for _, p := range ve.Problems {
		out = append(out, p.Path)
	}
	return out
}

// Ganglion has one receipts writer; several used to be accepted and all
// but the first ignored.
func TestValidateRefusesSeveralReceiptsWriters(t *testing.T) {
	paths := loadProblems(t, [2]string{"hs.yaml", validFleet + "  receipts: [main, persister1]\n"})
	if !slices.Contains(paths, "stream_writers.receipts") {
		t.Fatalf("problems %v, want stream_writers.receipts", paths)
	}
	if _, err := config.Load(writeFiles(t, [2]string{"hs.yaml", validFleet + "  receipts: persister1\n"}), nil); err != nil {
		t.Fatalf("one receipts writer: %v", err)
	}
}

func TestValidateTLSListenerNeedsCertificate(t *testing.T) {
	paths := loadProblems(t, [2]string{"hs.yaml", minimalMain + "    tls: true\n"})
	if !slices.Equal(paths, []string{"listeners[0].tls"}) {
		t.Fatalf("problems %v, want listeners[0].tls", paths)
	}
}

func TestLoadTLSCertificate(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir)
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "    tls: true\ntls_certificate_path: " + cert +
		"\ntls_private_key_path: " + key + "\n"})
	if cfg.TLSCertificate() == nil {
		t.Fatal("no certificate loaded for the tls listener")
	}
	// A key that does not match, or a missing file, stops the start.
	other := t.TempDir()
	_, otherKey := writeSelfSigned(t, other)
	paths := loadProblems(t, [2]string{"hs.yaml", minimalMain + "    tls: true\ntls_certificate_path: " + cert +
		"\ntls_private_key_path: " + otherKey + "\n"})
	if !slices.Equal(paths, []string{"tls_certificate_path"}) {
		t.Fatalf("mismatched key: problems %v", paths)
	}
}

func TestValidateTrustedProxies(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "    x_forwarded: true\n    x_forwarded_trusted_proxies: [10.0.0.0/8, '::1']\n"})
	if got := cfg.Listeners()[0].XForwardedTrustedProxies; !slices.Equal(got, []string{"10.0.0.0/8", "::1"}) {
		t.Fatalf("trusted proxies %v", got)
	}
	paths := loadProblems(t, [2]string{"hs.yaml", minimalMain + "    x_forwarded_trusted_proxies: [10.0.0.0/33]\n"})
	if !slices.Equal(paths, []string{"listeners[0].x_forwarded_trusted_proxies", "listeners[0].x_forwarded_trusted_proxies"}) {
		t.Fatalf("problems %v, want the list refused twice (no x_forwarded, bad range)", paths)
	}
}

func TestValidateAcceptsPprofResource(t *testing.T) {
	mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "  - {port: 9100, type: http, bind_addresses: ['127.0.0.1'], resources: [{names: [metrics, pprof]}]}\n"})
}

func TestLoadNotBuiltKeys(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + `
email: {smtp_host: localhost}
oidc_providers: []
track_appservice_user_ips: true
federation_certificate_verification_whitelist: []
worker_daemonize: false
`})
	want := []string{"federation_certificate_verification_whitelist", "oidc_providers", "track_appservice_user_ips"}
	if !slices.Equal(cfg.NotBuiltKeys, want) {
		t.Errorf("NotBuiltKeys = %v, want %v", cfg.NotBuiltKeys, want)
	}
	for _, k := range want {
		if config.NotBuilt()[k] == "" {
			t.Errorf("NotBuilt()[%q] names no feature", k)
		}
	}
}

// writeSelfSigned writes a self-signed certificate and its key as PEM.
func writeSelfSigned(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func TestLoadAllowProfileLookupOverFederation(t *testing.T) {
	if cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain}); !cfg.ProfileLookupOverFederation() {
		t.Error("allow_profile_lookup_over_federation unset: lookups refused, want allowed (Synapse's default)")
	}
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + "allow_profile_lookup_over_federation: false\n"})
	if cfg.ProfileLookupOverFederation() {
		t.Error("allow_profile_lookup_over_federation: false: lookups allowed")
	}
	if len(cfg.NotBuiltKeys) != 0 {
		t.Errorf("NotBuiltKeys = %v: the key is read now", cfg.NotBuiltKeys)
	}
}
