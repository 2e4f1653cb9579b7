package config_test

import (
	"slices"
	"testing"

	"ganglion/internal/config"
)

func TestOpenTelemetrySection(t *testing.T) {
	if o := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain}).OpenTelemetry; o.Enabled || o.Ratio() != 1 {
		t.Errorf("default: %+v, ratio %v", o, o.Ratio())
	}
	o := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + `opentelemetry:
  enabled: true
  endpoint: http://127.0.0.1:4318
  sample_ratio: 0.25
`}).OpenTelemetry
	if !o.Enabled || o.Endpoint != "http://127.0.0.1:4318" || o.Ratio() != 0.25 {
		t.Errorf("loaded: %+v", o)
	}
	_, err := config.Load(writeFiles(t, [2]string{"homeserver.yaml", minimalMain + `opentelemetry:
  enabled: true
  endpoint: 127.0.0.1:4318
  sample_ratio: 2
`}), nil)
	paths := problemPaths(t, err)
	for _, want := range []string{"opentelemetry.endpoint", "opentelemetry.sample_ratio"} {
		if !slices.Contains(paths, want) {
			t.Errorf("problems %v lack %s", paths, want)
		}
	}
}
