package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"ganglion/internal/config"
)

// TestNewBusFromRedisSection: redis.use_tls builds a TLS client (it was
// parsed and ignored once), a bad CA refuses to start, and the channel is
// server_name behind redis.channel_prefix.
func TestNewBusFromRedisSection(t *testing.T) {
	dir := t.TempDir()
	// A self-signed certificate is a valid CA file for the pool.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "redis CA"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := &config.Config{ServerName: "example.org",
		Redis: config.RedisConfig{Enabled: true, Host: "redis.internal", Port: 6380, UseTLS: true, CAFile: caFile, ChannelPrefix: "fleet-a:"}}
	bus, err := newBus(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if !bus.UsesTLS() {
		t.Error("redis.use_tls: true built a client without TLS")
	}
	if got := bus.ChannelName(); got != "fleet-a:example.org" {
		t.Errorf("channel = %q, want fleet-a:example.org", got)
	}

	cfg.Redis.UseTLS, cfg.Redis.CAFile, cfg.Redis.ChannelPrefix = false, "", ""
	if bus, err = newBus(cfg, log); err != nil {
		t.Fatal(err)
	}
	if bus.UsesTLS() || bus.ChannelName() != "example.org" {
		t.Errorf("plain config: TLS %v, channel %q", bus.UsesTLS(), bus.ChannelName())
	}

	cfg.Redis.UseTLS, cfg.Redis.CAFile = true, filepath.Join(dir, "missing.pem")
	if _, err := newBus(cfg, log); err == nil {
		t.Error("a missing CA file was accepted")
	}
}
