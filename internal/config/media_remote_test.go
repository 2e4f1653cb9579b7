package config_test

import (
	"slices"
	"testing"
	"time"

	"ganglion/internal/config"
)

func TestRemoteMediaKeys(t *testing.T) {
	cfg, err := config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"m.yaml", `
media_retention:
  remote_media_lifetime: 14d
prevent_media_downloads_from: [evil.example, "bad.example:8448"]
`}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.MediaRetention.RemoteMediaLifetime.Must(); got != 14*24*time.Hour {
		t.Errorf("remote_media_lifetime = %v", got)
	}
	if p := cfg.MediaDownloadsPrevented(); len(p) != 2 || !p["evil.example"] || !p["bad.example:8448"] {
		t.Errorf("prevent_media_downloads_from = %v", p)
	}
	if len(cfg.UnknownKeys) != 0 {
		t.Errorf("unknown keys: %v", cfg.UnknownKeys)
	}
	if _, ok := config.NotBuilt()["media_retention"]; ok {
		t.Error("media_retention is still listed as not built")
	}

	_, err = config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"m.yaml", `
media_retention:
  local_media_lifetime: soon
  remote_media_lifetime: -1d
`}), nil)
	want := []string{"media_retention.local_media_lifetime", "media_retention.remote_media_lifetime"}
	if got := problemPaths(t, err); !slices.Equal(got, want) {
		t.Errorf("problem paths = %v, want %v\n%v", got, want, err)
	}
}
