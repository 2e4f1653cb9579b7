package config_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ganglion/internal/config"
)

func TestGenerateStarterRoundTrip(t *testing.T) {
	tests := []struct {
		name   string
		server string
	}{
		{"plain domain", "example.org"},
		{"with port", "localhost:8448"},
		{"ip literal", "[::1]:8448"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A path YAML would misread unquoted.
			dataDir := filepath.Join(t.TempDir(), "#data: 'dir'")
			out, err := config.GenerateStarter(tt.server, dataDir)
			if err != nil {
				t.Fatal(err)
			}
			// Saved somewhere other than dataDir: absolute paths must not move.
			path := filepath.Join(t.TempDir(), "homeserver.yaml")
			if err := os.WriteFile(path, out, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load([]string{path}, nil)
			if err != nil {
				t.Fatalf("generated config does not load:\n%v\n---\n%s", err, out)
			}
			checks := []struct {
				name      string
				got, want any
			}{
				{"server_name", cfg.ServerName, tt.server},
				{"public_baseurl", cfg.PublicBaseURL, "http://127.0.0.1:8008/"},
				{"listener", strings.Join(cfg.Listeners()[0].Addresses(), ","), "127.0.0.1:8008"},
				{"client", cfg.Listeners()[0].HasResource("client"), true},
				{"federation", cfg.Listeners()[0].HasResource("federation"), true},
				{"database", cfg.Database.Name, config.DatabaseSQLite},
				{"database path", cfg.Database.Args.Database, filepath.Join(dataDir, "homeserver.db")},
				{"signing key", cfg.SigningKeyPath, filepath.Join(dataDir, tt.server+".signing.key")},
				{"media", cfg.MediaStorePath, filepath.Join(dataDir, "media_store")},
				{"registration", cfg.EnableRegistration && cfg.EnableRegistrationWithoutVerification, true},
				{"max upload", cfg.MaxUploadBytes(), int64(50 << 20)},
				{"rc_message", cfg.RCMessage, config.Default().RCMessage},
				{"rc_login", cfg.RCLogin, config.Default().RCLogin},
				{"no log_config", cfg.LogConfig, ""},
				{"main", cfg.IsMain(), true},
				{"nothing unknown", len(cfg.UnknownKeys), 0},
				{"key server set", cfg.KeyServersDefaulted(), false},
				{"key server", cfg.KeyServers()[0].ServerName, "matrix.org"},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s: got %#v, want %#v", c.name, c.got, c.want)
				}
			}
			if len(cfg.RegistrationSecret()) < 40 || cfg.MacaroonSecretKey == "" || cfg.FormSecret == "" {
				t.Errorf("secrets missing or short: %q", cfg.RegistrationSecret())
			}
			for _, want := range []string{"# DEMO ONLY", "psycopg2", "GANGLION_DATABASE_URL", "#log_config:"} {
				if !bytes.Contains(out, []byte(want)) {
					t.Errorf("starter lacks %q", want)
				}
			}
		})
	}
}

func TestGenerateStarterFreshSecrets(t *testing.T) {
	dir := t.TempDir()
	a, err := config.GenerateStarter("example.org", dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := config.GenerateStarter("example.org", dir)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, b) {
		t.Error("two starters are identical; secrets are not random")
	}
}

func TestGenerateStarterRejectsBadInput(t *testing.T) {
	tests := []struct{ server, dir string }{
		{"", "/tmp/x"},
		{"has space", "/tmp/x"},
		{"https://example.org", "/tmp/x"},
		{"example.org", ""},
	}
	for _, tt := range tests {
		if _, err := config.GenerateStarter(tt.server, tt.dir); err == nil {
			t.Errorf("GenerateStarter(%q, %q) succeeded", tt.server, tt.dir)
		}
	}
}
