package config

// MediaRetention is Synapse's media_retention section. Only
// remote_media_lifetime is acted on; local_media_lifetime is accepted and
// reported at start as not built.
type MediaRetention struct {
	LocalMediaLifetime  Duration `yaml:"local_media_lifetime"`
	RemoteMediaLifetime Duration `yaml:"remote_media_lifetime"`
}

// MediaDownloadsPrevented is prevent_media_downloads_from as a set: media
// of these servers is never fetched, and not served even when cached.
func (c *Config) MediaDownloadsPrevented() map[string]bool {
	m := make(map[string]bool, len(c.PreventMediaDownloadsFrom))
	for _, d := range c.PreventMediaDownloadsFrom {
		m[d] = true
	}
	return m
}

func (c *Config) validateRemoteMedia(ps *problems) {
	for _, k := range []struct {
		path string
		d    Duration
	}{{"media_retention.local_media_lifetime", c.MediaRetention.LocalMediaLifetime},
		{"media_retention.remote_media_lifetime", c.MediaRetention.RemoteMediaLifetime}} {
		if _, err := k.d.Parse(); err != nil {
			ps.add(k.path, "%v", err)
		}
	}
}
