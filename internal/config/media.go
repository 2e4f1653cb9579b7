package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// URLPattern is one entry of url_preview_url_blacklist: URL components
// (scheme, netloc, path, query, fragment, username, password) mapped to a
// glob, or to a regular expression when the value starts with ^.
type URLPattern map[string]string

// ParsePrefix reads an IP range of the url_preview_ip_range_* lists: CIDR
// notation or a single address.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// SpiderBytes is max_spider_size (Synapse's default 10M): the most a URL
// preview downloads of one page or image.
func (c *Config) SpiderBytes() int64 {
	if c.MaxSpiderSize == "" {
		return 10 << 20
	}
	n, err := c.MaxSpiderSize.Bytes()
	if err != nil {
		return 10 << 20
	}
	return n
}

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
	c.validateRemoteMedia(ps)
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
	if c.URLPreviewEnabled && c.URLPreviewIPRangeBlock == nil {
		// As Synapse: previews fetch URLs chosen by users, so the operator
		// must say which networks the server may not reach.
		ps.add("url_preview_ip_range_blacklist", "required when url_preview_enabled is true")
	}
	for key, list := range map[string]StringList{"url_preview_ip_range_blacklist": c.URLPreviewIPRangeBlock,
		"url_preview_ip_range_whitelist": c.URLPreviewIPRangeAllow} {
		for i, r := range list {
			if _, err := ParsePrefix(r); err != nil {
				ps.add(fmt.Sprintf("%s[%d]", key, i), "invalid IP range %q: %v", r, err)
			}
		}
	}
	for i, pat := range c.URLPreviewURLBlock {
		for k, v := range pat {
			switch k {
			case "scheme", "netloc", "path", "query", "fragment", "username", "password":
			default:
				ps.add(fmt.Sprintf("url_preview_url_blacklist[%d].%s", i, k), "unknown URL component")
				continue
			}
			if strings.HasPrefix(v, "^") {
				if _, err := regexp.Compile(v); err != nil {
					ps.add(fmt.Sprintf("url_preview_url_blacklist[%d].%s", i, k), "invalid regular expression: %v", err)
				}
			}
		}
	}
	if c.MaxSpiderSize != "" {
		if _, err := c.MaxSpiderSize.Bytes(); err != nil {
			ps.add("max_spider_size", "%v", err)
		}
	}
	if c.MaxPendingMediaUploads != nil && *c.MaxPendingMediaUploads < 1 {
		ps.add("max_pending_media_uploads", "must be at least 1, got %d", *c.MaxPendingMediaUploads)
	}
}
