package config_test

import (
	"slices"
	"testing"
	"time"

	"ganglion/internal/config"
)

func TestFederationSectionDefaultsAndValidation(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain})
	if cfg.Federation.MinRetryInterval() != 10*time.Minute || cfg.Federation.MaxRetryInterval() != 7*24*time.Hour ||
		cfg.Federation.DestinationRetryMultiplier != 2 {
		t.Fatalf("defaults: %+v", cfg.Federation)
	}
	cfg = mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain +
		"federation: {destination_min_retry_interval: 30s, destination_max_retry_interval: 2h, destination_retry_multiplier: 3}\n"})
	if cfg.Federation.MinRetryInterval() != 30*time.Second || cfg.Federation.MaxRetryInterval() != 2*time.Hour {
		t.Fatalf("parsed: %+v", cfg.Federation)
	}
	_, err := config.Load(writeFiles(t, [2]string{"homeserver.yaml", minimalMain +
		"federation: {destination_min_retry_interval: soon, destination_max_retry_interval: 0s, destination_retry_multiplier: 0.5}\n"}), nil)
	if err == nil {
		t.Fatal("Load succeeded, want problems")
	}
	want := []string{"federation.destination_max_retry_interval", "federation.destination_min_retry_interval", "federation.destination_retry_multiplier"}
	if got := problemPaths(t, err); !slices.Equal(got, want) {
		t.Errorf("problem paths %v, want %v", got, want)
	}
	_, err = config.Load(writeFiles(t, [2]string{"homeserver.yaml", minimalMain +
		"federation: {destination_min_retry_interval: 1h, destination_max_retry_interval: 1m}\n"}), nil)
	if got := problemPaths(t, err); !slices.Equal(got, []string{"federation.destination_max_retry_interval"}) {
		t.Errorf("max below min: problem paths %v", got)
	}
}
