package config_test

import (
	"path/filepath"
	"slices"
	"testing"

	"ganglion/internal/config"
)

// TestRedisSecurityKeys: password, TLS material and channel prefix load
// (relative paths against the config file), and bad combinations are
// refused with their key paths.
func TestRedisSecurityKeys(t *testing.T) {
	files := writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"tls/ca.pem", "x"},
		[2]string{"tls/client.crt", "x"}, [2]string{"tls/client.key", "x"}, [2]string{"redis.pass", "from-file\n"},
		[2]string{"overlay.yaml", `
redis:
  enabled: true
  password_path: redis.pass
  use_tls: true
  certificate_file: tls/client.crt
  private_key_file: tls/client.key
  ca_file: tls/ca.pem
  ca_path: tls
  channel_prefix: "fleet-a:"
`})
	cfg, err := config.Load([]string{files[0], files[len(files)-1]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(files[0])
	r := cfg.Redis
	if !r.UseTLS || r.CAFile != filepath.Join(dir, "tls/ca.pem") || r.CAPath != filepath.Join(dir, "tls") ||
		r.CertificateFile != filepath.Join(dir, "tls/client.crt") || r.PrivateKeyFile != filepath.Join(dir, "tls/client.key") {
		t.Errorf("TLS keys = %+v", r)
	}
	if r.ChannelPrefix != "fleet-a:" || r.EffectivePassword() != "from-file" {
		t.Errorf("prefix %q, password %q", r.ChannelPrefix, r.EffectivePassword())
	}

	bad := []struct {
		name, overlay string
		want          []string
	}{
		{"tls files without use_tls", "redis: {enabled: true, ca_file: /etc/hostname}\n", []string{"redis.ca_file"}},
		{"certificate without key", "redis: {enabled: true, use_tls: true, certificate_file: /etc/hostname}\n",
			[]string{"redis.private_key_file"}},
		{"missing ca_path", "redis: {enabled: true, use_tls: true, ca_path: /no/such/dir}\n", []string{"redis.ca_path"}},
		{"prefix with a space", "redis: {enabled: true, channel_prefix: 'a b'}\n", []string{"redis.channel_prefix"}},
		{"prefix with a glob", "redis: {enabled: true, channel_prefix: 'a*'}\n", []string{"redis.channel_prefix"}},
		{"password and password_path", "redis: {enabled: true, password: x, password_path: /etc/hostname}\n",
			[]string{"redis.password_path"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"overlay.yaml", tt.overlay}), nil)
			if err == nil {
				t.Fatalf("Load succeeded, want problems at %v", tt.want)
			}
			if got := problemPaths(t, err); !slices.Equal(got, tt.want) {
				t.Errorf("problem paths = %v, want %v\nerror:\n%v", got, tt.want, err)
			}
		})
	}
}
