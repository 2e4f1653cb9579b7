package fleet_test

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"ganglion/internal/fleet"
	"ganglion/internal/router"
)

func TestPrometheusConfig(t *testing.T) {
	const deployment = `
config: [homeserver.yaml]
bind_address: 0.0.0.0
instances:
  - name: main
    listeners:
      - {port: 8080, resources: [client]}
      - {port: 9093, resources: [replication, metrics]}
  - name: worker1
    app: generic_worker
    listeners:
      - {port: 8081, resources: [client]}
      - {port: 9101, resources: [replication]}
      - {port: 9201, resources: [metrics], bind_address: 10.0.0.5}
  - name: persister1
    app: generic_worker
    listeners:
      - {port: 9111, resources: [replication]}
    stream_writers: [events]
  - name: router
    app: router
    listeners:
      - {port: 8008, resources: [client]}
`
	d, err := fleet.Load(writeDeployment(t, deployment, ""))
	if err != nil {
		t.Fatal(err)
	}
	data, err := fleet.PrometheusConfig(d)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			HonorLabels   bool   `yaml:"honor_labels"`
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string          `yaml:"targets"`
				Labels  map[string]string `yaml:"labels"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("not YAML: %v\n%s", err, data)
	}
	got := map[string]string{} // instance → job path target role
	for _, j := range doc.ScrapeConfigs {
		if !j.HonorLabels {
			t.Errorf("job %s does not honor the series' instance labels", j.JobName)
		}
		for _, s := range j.StaticConfigs {
			got[s.Labels["ganglion_instance"]] = strings.Join([]string{j.JobName, j.MetricsPath, strings.Join(s.Targets, ","), s.Labels["role"]}, " ")
		}
	}
	want := map[string]string{
		// A wildcard bind is scraped on loopback; a listener's own bind
		// address wins.
		"main":    "ganglion /metrics 127.0.0.1:9093 main",
		"worker1": "ganglion /metrics 10.0.0.5:9201 generic_worker",
		// A router without a metrics listener serves them on its own.
		"router": "ganglion-router " + router.MetricsPath + " 127.0.0.1:8008 router",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	if _, ok := got["persister1"]; ok || !strings.Contains(string(data), "Not scraped (no metrics listener): [persister1]") {
		t.Errorf("persister1 has no metrics listener:\n%s", data)
	}
}
