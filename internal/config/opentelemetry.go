package config

import "net/url"

// OpenTelemetry is Ganglion's tracing section (Synapse has `opentracing`,
// for Jaeger): spans of the router, every request, HTTP replication calls
// and database transactions, exported with OTLP over HTTP. Off by default.
//
//	opentelemetry:
//	  enabled: true
//	  endpoint: http://127.0.0.1:4318   # the collector's OTLP/HTTP base URL
//	  sample_ratio: 0.1                  # of traces started here; a sampled parent is followed
type OpenTelemetry struct {
	Enabled     bool     `yaml:"enabled"`
	Endpoint    string   `yaml:"endpoint"`
	SampleRatio *float64 `yaml:"sample_ratio"`
}

// Ratio is sample_ratio, 1 when unset.
func (o OpenTelemetry) Ratio() float64 {
	if o.SampleRatio == nil {
		return 1
	}
	return *o.SampleRatio
}

func (c *Config) validateOpenTelemetry(ps *problems) {
	o := c.OpenTelemetry
	if r := o.Ratio(); r < 0 || r > 1 {
		ps.add("opentelemetry.sample_ratio", "must be between 0 and 1, got %v", r)
	}
	if !o.Enabled {
		return
	}
	u, err := url.Parse(o.Endpoint)
	if o.Endpoint == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		ps.add("opentelemetry.endpoint", "must be the collector's http:// or https:// OTLP base URL when tracing is enabled, got %q", o.Endpoint)
	}
}
