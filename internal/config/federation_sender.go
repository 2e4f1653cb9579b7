package config

import "time"

// FederationSection is Synapse's `federation:` section, as far as the
// federation sender uses it: how long a destination that failed is left
// alone before the next attempt.
type FederationSection struct {
	// DestinationMinRetryInterval is the first backoff after a failure
	// (Synapse's default 10m).
	DestinationMinRetryInterval Duration `yaml:"destination_min_retry_interval"`
	// DestinationRetryMultiplier grows the backoff after each further
	// failure (default 2).
	DestinationRetryMultiplier float64 `yaml:"destination_retry_multiplier"`
	// DestinationMaxRetryInterval caps it (default 1w).
	DestinationMaxRetryInterval Duration `yaml:"destination_max_retry_interval"`
}

func defaultFederationSection() FederationSection {
	return FederationSection{DestinationMinRetryInterval: "10m", DestinationRetryMultiplier: 2, DestinationMaxRetryInterval: "1w"}
}

// MinRetryInterval is destination_min_retry_interval (10 minutes when it
// does not parse; Validate reports that).
func (f FederationSection) MinRetryInterval() time.Duration {
	if d, err := f.DestinationMinRetryInterval.Parse(); err == nil && d > 0 {
		return d
	}
	return 10 * time.Minute
}

// MaxRetryInterval is destination_max_retry_interval (a week by default).
func (f FederationSection) MaxRetryInterval() time.Duration {
	if d, err := f.DestinationMaxRetryInterval.Parse(); err == nil && d > 0 {
		return d
	}
	return 7 * 24 * time.Hour
}

func (c *Config) validateFederationSection(ps *problems) {
	f := c.Federation
	minD, err1 := f.DestinationMinRetryInterval.Parse()
	if err1 != nil || minD <= 0 {
		ps.add("federation.destination_min_retry_interval", "must be a positive duration such as 10m, got %q", string(f.DestinationMinRetryInterval))
	}
	maxD, err2 := f.DestinationMaxRetryInterval.Parse()
	if err2 != nil || maxD <= 0 {
		ps.add("federation.destination_max_retry_interval", "must be a positive duration such as 1w, got %q", string(f.DestinationMaxRetryInterval))
	} else if err1 == nil && minD > 0 && maxD < minD {
		ps.add("federation.destination_max_retry_interval", "must not be shorter than destination_min_retry_interval")
	}
	if f.DestinationRetryMultiplier < 1 {
		ps.add("federation.destination_retry_multiplier", "must be at least 1, got %v", f.DestinationRetryMultiplier)
	}
}
