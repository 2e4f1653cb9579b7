package config

import "fmt"

// ThumbnailSize is one entry of thumbnail_sizes: a thumbnail the media
// repository generates for every uploaded image.
type ThumbnailSize struct {
	Width  int    `yaml:"width"`
	Height int    `yaml:"height"`
	Method string `yaml:"method"` // "crop" or "scale"
}

// DefaultThumbnailSizes is Synapse's default thumbnail_sizes list.
func DefaultThumbnailSizes() []ThumbnailSize {
	return []ThumbnailSize{
		{Width: 32, Height: 32, Method: "crop"},
		{Width: 96, Height: 96, Method: "crop"},
		{Width: 320, Height: 240, Method: "scale"},
		{Width: 640, Height: 480, Method: "scale"},
		{Width: 800, Height: 600, Method: "scale"},
	}
}

// EffectiveThumbnailSizes is thumbnail_sizes, or Synapse's defaults when
// the key is absent.
func (c *Config) EffectiveThumbnailSizes() []ThumbnailSize {
	if c.ThumbnailSizes == nil {
		return DefaultThumbnailSizes()
	}
	return c.ThumbnailSizes
}

// MaxImagePixelCount is max_image_pixels (Synapse's default 32M): images
// with more pixels are stored but never decoded for thumbnails.
func (c *Config) MaxImagePixelCount() int64 {
	if c.MaxImagePixels == "" {
		return 32 << 20
	}
	n, err := c.MaxImagePixels.Bytes()
	if err != nil {
		return 32 << 20
	}
	return n
}

// AuthenticatedMedia is enable_authenticated_media, default true as in
// Synapse since 1.120: media uploaded while it is on is served only by the
// authenticated /_matrix/client/v1/media endpoints.
func (c *Config) AuthenticatedMedia() bool {
	return c.EnableAuthenticatedMedia == nil || *c.EnableAuthenticatedMedia
}

// PendingMediaUploads is max_pending_media_uploads (Synapse's default 5):
// how many ids a user may hold from POST /create without uploading to them.
func (c *Config) PendingMediaUploads() int {
	if c.MaxPendingMediaUploads == nil {
		return 5
	}
	return *c.MaxPendingMediaUploads
}

func (c *Config) validateMedia(ps *problems) {
	for i, s := range c.ThumbnailSizes {
		p := fmt.Sprintf("thumbnail_sizes[%d]", i)
		if s.Width < 1 || s.Height < 1 {
			ps.add(p, "width and height must be positive, got %dx%d", s.Width, s.Height)
		}
		if s.Method != "crop" && s.Method != "scale" {
			ps.add(p+".method", "must be crop or scale, got %q", s.Method)
		}
	}
	if c.MaxImagePixels != "" {
		if _, err := c.MaxImagePixels.Bytes(); err != nil {
			ps.add("max_image_pixels", "%v", err)
		}
	}
	if c.MaxPendingMediaUploads != nil && *c.MaxPendingMediaUploads < 1 {
		ps.add("max_pending_media_uploads", "must be at least 1, got %d", *c.MaxPendingMediaUploads)
	}
}
