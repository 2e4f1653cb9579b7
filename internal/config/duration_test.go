package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"ganglion/internal/config"
)

func TestDurationParse(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"":      0,
		"250":   250 * time.Millisecond,
		"250ms": 250 * time.Millisecond,
		"5s":    5 * time.Second,
		"5m":    5 * time.Minute,
		"2h":    2 * time.Hour,
		"1d":    24 * time.Hour,
		"1w":    7 * 24 * time.Hour,
		"1y":    365 * 24 * time.Hour,
	} {
		if got, err := config.Duration(in).Parse(); err != nil || got != want {
			t.Errorf("Duration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"5x", "m", "-1s", "1.5h", "99999999999999y"} {
		if _, err := config.Duration(bad).Parse(); err == nil {
			t.Errorf("Duration(%q) parsed", bad)
		}
	}
}

// TestTokenLifetimeKeys: the lifetimes load with Synapse's default (5m for
// refreshable access tokens); bad values and lifetimes beyond
// session_lifetime are refused with their key paths.
func TestTokenLifetimeKeys(t *testing.T) {
	c, err := config.Load(writeFiles(t, [2]string{"hs.yaml", minimalMain}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.RefreshableAccessTokenLifetime.Must(); got != 5*time.Minute {
		t.Fatalf("default refreshable_access_token_lifetime = %v, want 5m", got)
	}
	if c.SessionLifetime.Set() || c.RefreshTokenLifetime.Set() || c.NonrefreshableAccessTokenLifetime.Set() {
		t.Fatalf("lifetimes set by default: %+v", c)
	}
	c, err = config.Load(writeFiles(t, [2]string{"hs.yaml", minimalMain + "session_lifetime: 30d\nrefresh_token_lifetime: 7d\nnonrefreshable_access_token_lifetime: 90000\n"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.SessionLifetime.Must() != 30*24*time.Hour || c.RefreshTokenLifetime.Must() != 7*24*time.Hour || c.NonrefreshableAccessTokenLifetime.Must() != 90*time.Second {
		t.Fatalf("lifetimes = %+v", c)
	}

	_, err = config.Load(writeFiles(t, [2]string{"hs.yaml", minimalMain +
		"session_lifetime: 1h\nrefreshable_access_token_lifetime: 2h\nrefresh_token_lifetime: soon\nnonrefreshable_access_token_lifetime: 0\n"}), nil)
	var ve *config.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Load = %v, want a ValidationError", err)
	}
	for _, key := range []string{"refreshable_access_token_lifetime", "refresh_token_lifetime", "nonrefreshable_access_token_lifetime"} {
		found := false
		for _, p := range ve.Problems {
			found = found || p.Path == key
		}
		if !found {
			t.Errorf("no problem for %s in %v", key, err)
		}
	}
	if !strings.Contains(err.Error(), "exceeds session_lifetime") {
		t.Errorf("error %v does not say the lifetime exceeds session_lifetime", err)
	}
}
