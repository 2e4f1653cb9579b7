package testca_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"ganglion/internal/testutil/testca"
)

// A server with an issued certificate is trusted for its names, by a client
// trusting only the CA, and for no other name.
func TestIssuedCertificateVerifies(t *testing.T) {
	ca := testca.New(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	srv.TLS = ca.ServerTLS(t, "a.test", "127.0.0.1")
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())

	get := func(serverName string) error {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: serverName}}}
		resp, err := c.Get("https://127.0.0.1:" + port + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	for _, ok := range []string{"a.test", "127.0.0.1"} {
		if err := get(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	if err := get("b.test"); err == nil {
		t.Error("certificate accepted for a name it does not have")
	}
	// The system roots do not know the CA.
	resp, err := http.Get(srv.URL)
	if err == nil {
		resp.Body.Close()
		t.Error("test CA trusted by the default client")
	}
}

func TestWrittenFiles(t *testing.T) {
	ca := testca.New(t)
	dir := t.TempDir()
	caPath := ca.WriteCA(t, dir)
	certPath, keyPath := ca.WriteServerCert(t, dir, "b.test")
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	caCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !caCert.IsCA {
		t.Fatalf("CA file: %v, IsCA %v", err, caCert != nil && caCert.IsCA)
	}
	leaf := ca.Issue(t, "b.test")
	cert, _ := x509.ParseCertificate(leaf.Certificate[0])
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "b.test"}); err != nil {
		t.Fatal(err)
	}
}
