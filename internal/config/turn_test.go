package config_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestTURNKeys(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "turn.secret")
	if err := os.WriteFile(secret, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "turn_uris: ['turn:t.example.org?transport=udp', 'turns:t.example.org']\n" +
		"turn_shared_secret_path: " + secret + "\nturn_user_lifetime: 2h\n"})
	if cfg.TURNSecret() != "from-file" || cfg.TURNLifetime() != 2*time.Hour || len(cfg.TURNURIs) != 2 {
		t.Fatalf("secret %q lifetime %v uris %v", cfg.TURNSecret(), cfg.TURNLifetime(), cfg.TURNURIs)
	}
	if d := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain}); d.TURNLifetime() != time.Hour || !d.TURNAllowGuests {
		t.Fatalf("defaults: lifetime %v allow guests %v, want 1h true", d.TURNLifetime(), d.TURNAllowGuests)
	}
	paths := loadProblems(t, [2]string{"hs.yaml", minimalMain + "turn_uris: ['http://x']\nturn_shared_secret: a\n" +
		"turn_shared_secret_path: /x\nturn_username: u\nturn_user_lifetime: soon\n"})
	for _, want := range []string{"turn_uris[0]", "turn_shared_secret_path", "turn_password", "turn_user_lifetime"} {
		if !slices.Contains(paths, want) {
			t.Errorf("problems %v lack %s", paths, want)
		}
	}
}

func TestServerNoticesKeys(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"hs.yaml", minimalMain + "server_notices:\n  system_mxid_localpart: notices\n  auto_join: true\n"})
	if !cfg.ServerNoticesEnabled() || cfg.ServerNoticesUserID() != "@notices:"+cfg.ServerName || !cfg.ServerNotices.AutoJoin {
		t.Fatalf("server notices: %+v", cfg.ServerNotices)
	}
	paths := loadProblems(t, [2]string{"hs.yaml", minimalMain + "server_notices:\n  system_mxid_localpart: Bad Name\n  room_avatar_url: http://x/y\n"})
	if !slices.Equal(paths, []string{"server_notices.system_mxid_localpart", "server_notices.room_avatar_url"}) &&
		!slices.Equal(paths, []string{"server_notices.room_avatar_url", "server_notices.system_mxid_localpart"}) {
		t.Fatalf("problems %v", paths)
	}
	paths = loadProblems(t, [2]string{"hs.yaml", minimalMain + "server_notices:\n  room_name: x\n"})
	if !slices.Equal(paths, []string{"server_notices.system_mxid_localpart"}) {
		t.Fatalf("problems %v, want server_notices.system_mxid_localpart", paths)
	}
}
