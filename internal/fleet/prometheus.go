package fleet

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"

	"ganglion/internal/config"
	"ganglion/internal/router"
)

// PrometheusConfig is a Prometheus scrape config for the deployment's
// metrics listeners: one job per metrics path (instances serve /metrics;
// a router without a metrics listener serves router.MetricsPath on its
// client listener), one static target per instance labelled with its role.
// honor_labels keeps the instance label every Ganglion series carries (the
// instance name) instead of Prometheus's host:port. Targets are addresses
// on this host, as `ganglion up` runs the fleet: a wildcard bind becomes
// loopback.
func PrometheusConfig(d *Deployment) ([]byte, error) {
	type static struct {
		Targets []string          `yaml:"targets"`
		Labels  map[string]string `yaml:"labels"`
	}
	type job struct {
		JobName       string   `yaml:"job_name"`
		HonorLabels   bool     `yaml:"honor_labels"`
		MetricsPath   string   `yaml:"metrics_path"`
		StaticConfigs []static `yaml:"static_configs"`
	}
	jobs := map[string]*job{}
	var order []string
	var missing []string
	for _, in := range d.Instances {
		target, path, ok := metricsTarget(d, in)
		if !ok {
			missing = append(missing, in.Name)
			continue
		}
		name := "ganglion"
		if path != "/metrics" {
			name = "ganglion-router"
		}
		j := jobs[name]
		if j == nil {
			j = &job{JobName: name, HonorLabels: true, MetricsPath: path}
			jobs[name] = j
			order = append(order, name)
		}
		j.StaticConfigs = append(j.StaticConfigs, static{Targets: []string{target},
			Labels: map[string]string{"ganglion_instance": in.Name, "role": in.Role()}})
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("generate prometheus: no instance of %s has a metrics listener", d.File)
	}
	doc := struct {
		ScrapeConfigs []*job `yaml:"scrape_configs"`
	}{}
	for _, n := range order {
		doc.ScrapeConfigs = append(doc.ScrapeConfigs, jobs[n])
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Prometheus scrape config for the Ganglion fleet of %s, written by `ganglion generate prometheus`.\n", d.File)
	fmt.Fprintf(&b, "# Add these jobs to prometheus.yml's scrape_configs. The dashboard is contrib/grafana/ganglion.json.\n")
	if len(missing) > 0 {
		fmt.Fprintf(&b, "# Not scraped (no metrics listener): %v\n", missing)
	}
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("generate prometheus: %w", err)
	}
	return b.Bytes(), nil
}

// metricsTarget is where an instance serves its metrics: the listener with
// the metrics resource (a router's second listener is its metrics_listen),
// or a router's own listener at router.MetricsPath.
func metricsTarget(d *Deployment, in Instance) (target, path string, ok bool) {
	addr := func(l Listener) string {
		return net.JoinHostPort(connectHost(d.bind(l)), strconv.Itoa(l.Port))
	}
	if in.Role() == config.RoleRouter {
		switch len(in.Listeners) {
		case 0:
			return "", "", false
		case 1:
			return addr(in.Listeners[0]), router.MetricsPath, true
		}
		return addr(in.Listeners[1]), "/metrics", true
	}
	i := slices.IndexFunc(in.Listeners, func(l Listener) bool { return slices.Contains(l.Resources, "metrics") })
	if i < 0 {
		return "", "", false
	}
	return addr(in.Listeners[i]), "/metrics", true
}
