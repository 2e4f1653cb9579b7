package config_test

import (
	"slices"
	"testing"

	"ganglion/internal/config"
)

func TestMediaKeys(t *testing.T) {
	cfg, err := config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.EffectiveThumbnailSizes(); !slices.Equal(got, config.DefaultThumbnailSizes()) {
		t.Errorf("default thumbnail_sizes = %v", got)
	}
	if !cfg.AuthenticatedMedia() || cfg.MaxImagePixelCount() != 32<<20 || cfg.PendingMediaUploads() != 5 || cfg.DynamicThumbnails {
		t.Errorf("media defaults: authenticated %v, max pixels %d, pending %d, dynamic %v",
			cfg.AuthenticatedMedia(), cfg.MaxImagePixelCount(), cfg.PendingMediaUploads(), cfg.DynamicThumbnails)
	}
	cfg, err = config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"media.yaml", `
enable_authenticated_media: false
dynamic_thumbnails: true
max_image_pixels: 10M
max_pending_media_uploads: 2
thumbnail_sizes:
  - {width: 10, height: 20, method: crop}
`}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AuthenticatedMedia() || !cfg.DynamicThumbnails || cfg.MaxImagePixelCount() != 10<<20 || cfg.PendingMediaUploads() != 2 ||
		!slices.Equal(cfg.EffectiveThumbnailSizes(), []config.ThumbnailSize{{Width: 10, Height: 20, Method: "crop"}}) {
		t.Errorf("media keys not read: %+v", cfg)
	}
	if len(cfg.UnknownKeys) != 0 {
		t.Errorf("unknown keys: %v", cfg.UnknownKeys)
	}

	_, err = config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"media.yaml", `
max_image_pixels: lots
max_pending_media_uploads: 0
thumbnail_sizes:
  - {width: 0, height: 20, method: crop}
  - {width: 10, height: 20, method: stretch}
`}), nil)
	if err == nil {
		t.Fatal("invalid media keys accepted")
	}
	want := []string{"max_image_pixels", "max_pending_media_uploads", "thumbnail_sizes[0]", "thumbnail_sizes[1].method"}
	if got := problemPaths(t, err); !slices.Equal(got, want) {
		t.Errorf("problem paths = %v, want %v\n%v", got, want, err)
	}
}

func TestURLPreviewKeys(t *testing.T) {
	_, err := config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"p.yaml", "url_preview_enabled: true\n"}), nil)
	if got := problemPaths(t, err); !slices.Equal(got, []string{"url_preview_ip_range_blacklist"}) {
		t.Fatalf("previews without a blacklist: %v", err)
	}
	_, err = config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"p.yaml", `
url_preview_enabled: true
url_preview_ip_range_blacklist: [10.0.0.0/8, not-an-ip]
url_preview_ip_range_whitelist: [1.2.3.4/99]
url_preview_url_blacklist: [{netloc: '^(bad'}, {host: x}]
max_spider_size: big
`}), nil)
	want := []string{"max_spider_size", "url_preview_ip_range_blacklist[1]", "url_preview_ip_range_whitelist[0]",
		"url_preview_url_blacklist[0].netloc", "url_preview_url_blacklist[1].host"}
	if got := problemPaths(t, err); !slices.Equal(got, want) {
		t.Fatalf("problem paths = %v, want %v\n%v", got, want, err)
	}
	cfg, err := config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"p.yaml", `
url_preview_enabled: true
url_preview_ip_range_blacklist: [127.0.0.0/8, "::1"]
url_preview_url_blacklist: [{netloc: 'google.com'}]
max_spider_size: 1M
`}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.URLPreviewEnabled || len(cfg.URLPreviewIPRangeBlock) != 2 || cfg.SpiderBytes() != 1<<20 || cfg.URLPreviewURLBlock[0]["netloc"] != "google.com" {
		t.Fatalf("preview keys not read: %+v", cfg)
	}
	if p, err := config.ParsePrefix("::1"); err != nil || p.Bits() != 128 {
		t.Fatalf("single address as a range: %v %v", p, err)
	}
}
