package router

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"ganglion/internal/config"
	"ganglion/internal/forwarded"
	"ganglion/internal/mxhttp"
	"ganglion/internal/routes"
)

// Defaults of the router section.
const (
	DefaultHealthInterval           = time.Second
	DefaultBindAddress              = "0.0.0.0"
	DefaultMaxFederationRequestSize = 10 << 20
	// DefaultMaxRequestSize matches what the endpoints themselves accept,
	// so the router turns away early exactly what a worker would refuse.
	DefaultMaxRequestSize = mxhttp.DefaultMaxBody
)

// Config is the router: section, read from the same files as the shared
// config (later files override earlier ones, key by key):
//
//	router:
//	  listen: {port: 8008, bind_address: 127.0.0.1, x_forwarded: false}
//	  metrics_listen: {port: 9108, bind_address: 127.0.0.1}   # optional
//	  instances:                     # where each instance's HTTP listeners are
//	    worker1: {client_url: "http://10.0.0.5:8081"}
//	    media1: {client_url: "http://10.0.0.6:8085", media_url: "http://10.0.0.6:8085"}
//	  worker_configs: [worker1.yaml] # or derive them from the workers' own files
//	  pools:
//	    sync: [worker1, worker2]
//	    initial_sync: [worker3]
//	    client: [worker1, worker2]
//	    sso: main
//	  max_request_size: 1M           # JSON bodies (default 1M)
//	  max_federation_request_size: 10M
//	  max_upload_size: 50M           # media (default: the shared max_upload_size)
//	  health_check_interval: 1s
//
// Instance URLs: main's come from the shared listeners, a worker's from
// its file in worker_configs (paths relative to the first config file);
// instances entries win. Wildcard bind addresses become 127.0.0.1.
//
// Pools: each class has a chain of pools (routes.Class.Pools, e.g. event
// sending: events, then client); the first configured pool with a healthy
// member serves it, later ones and finally main take over when a whole
// pool is down. Stream-writer classes go first to the stream's writers
// from stream_writers when those have a URL. No pools at all means
// everything goes to main.
//
// Metrics are served on metrics_listen at /metrics, or, without it, on the
// router's own listener at /_ganglion/router/metrics.
type Config struct {
	Listen        config.Listener              `yaml:"listen"`
	MetricsListen *config.Listener             `yaml:"metrics_listen"`
	Instances     map[string]InstanceURLs      `yaml:"instances"`
	WorkerConfigs []string                     `yaml:"worker_configs"`
	Pools         map[string]config.StringList `yaml:"pools"`

	MaxRequestSize           config.ByteSize `yaml:"max_request_size"`
	MaxFederationRequestSize config.ByteSize `yaml:"max_federation_request_size"`
	MaxUploadSize            config.ByteSize `yaml:"max_upload_size"`
	HealthCheckInterval      time.Duration   `yaml:"health_check_interval"`

	// Filled by Load.
	// Name is the router's instance name for logs: worker_name when the
	// files set worker_app: router, else "router".
	Name   string `yaml:"-"`
	Limits Limits `yaml:"-"`
	// unforwarded lists, sorted, the instances whose listener files Load
	// read and whose client listener lacks x_forwarded: behind the router
	// all their clients would share its address.
	unforwarded []string
}

// InstanceURLs says where one instance's HTTP listeners are. FederationURL
// and MediaURL default to ClientURL.
type InstanceURLs struct {
	ClientURL     string `yaml:"client_url"`
	FederationURL string `yaml:"federation_url"`
	MediaURL      string `yaml:"media_url"`
}

// URLFor returns the URL serving a listener resource.
func (u InstanceURLs) URLFor(resource string) string {
	switch resource {
	case "federation", "keys":
		if u.FederationURL != "" {
			return u.FederationURL
		}
	case "media":
		if u.MediaURL != "" {
			return u.MediaURL
		}
	}
	return u.ClientURL
}

// Limits are the request body limits in bytes, per routes.BodyLimit.
type Limits struct {
	JSON, Federation, Media int64
}

// For returns the limit of a class.
func (l Limits) For(b routes.BodyLimit) int64 {
	switch b {
	case routes.LimitFederation:
		return l.Federation
	case routes.LimitMedia:
		return l.Media
	}
	return l.JSON
}

// Load reads the shared config (config.Load, with its validation) and the
// router section of the same files, fills defaults and derived instance
// URLs, and validates the section. Problems come back together as a
// *config.ValidationError with key paths.
func Load(paths []string, env func(string) string) (*config.Config, *Config, error) {
	cfg, err := config.Load(paths, env)
	if err != nil {
		return nil, nil, err
	}
	rc := &Config{}
	for _, p := range paths {
		if err := decodeSection(p, rc); err != nil {
			return nil, nil, err
		}
	}
	if err := rc.complete(cfg); err != nil {
		return nil, nil, err
	}
	return cfg, rc, nil
}

// decodeSection decodes the router key of one file on top of rc. Unknown
// keys are errors: a misspelt pool name would silently send traffic to
// main.
func decodeSection(path string, rc *Config) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("load router config: %w", err)
	}
	var doc struct {
		Router yaml.Node `yaml:"router"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("load router config %s: %w", path, err)
	}
	if doc.Router.Kind == 0 {
		return nil
	}
	raw, err := yaml.Marshal(&doc.Router)
	if err != nil {
		return fmt.Errorf("load router config %s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(rc); err != nil {
		return fmt.Errorf("load router config %s: router: %w", path, err)
	}
	return nil
}

// NewConfig completes a router section built in code (tests, other tools)
// against the shared config, as Load does.
func NewConfig(cfg *config.Config, rc Config) (*Config, error) {
	out := rc
	out.Instances = maps.Clone(rc.Instances)
	out.Pools = make(map[string]config.StringList, len(rc.Pools))
	for k, v := range rc.Pools {
		out.Pools[k] = slices.Clone(v)
	}
	if err := out.complete(cfg); err != nil {
		return nil, err
	}
	return &out, nil
}

func (rc *Config) complete(cfg *config.Config) error {
	var ps []config.Problem
	add := func(path, format string, args ...any) {
		ps = append(ps, config.Problem{Path: path, Message: fmt.Sprintf(format, args...)})
	}
	rc.Name = "router"
	if cfg.WorkerRole() == config.RoleRouter && cfg.WorkerName != "" {
		rc.Name = cfg.WorkerName
	}
	if len(rc.Listen.BindAddresses) == 0 {
		rc.Listen.BindAddresses = []string{DefaultBindAddress}
	}
	if rc.Listen.Port < 1 || rc.Listen.Port > 65535 {
		add("router.listen.port", "must be between 1 and 65535, got %d", rc.Listen.Port)
	}
	if rc.Listen.XForwardedTrustedProxies != nil {
		if _, err := forwarded.Parse(rc.Listen.XForwardedTrustedProxies); err != nil {
			add("router.listen.x_forwarded_trusted_proxies", "%v", err)
		}
	}
	if rc.Listen.TLS {
		add("router.listen.tls", "not supported: terminate TLS in front of the router and set x_forwarded: true")
	}
	if m := rc.MetricsListen; m != nil {
		if len(m.BindAddresses) == 0 {
			m.BindAddresses = []string{"127.0.0.1"}
		}
		if m.Port < 1 || m.Port > 65535 {
			add("router.metrics_listen.port", "must be between 1 and 65535, got %d", m.Port)
		}
	}
	if rc.HealthCheckInterval == 0 {
		rc.HealthCheckInterval = DefaultHealthInterval
	}
	if rc.HealthCheckInterval < 0 {
		add("router.health_check_interval", "must be positive")
	}
	size := func(key string, v config.ByteSize, def int64) int64 {
		if v == "" {
			return def
		}
		n, err := v.Bytes()
		if err != nil {
			add("router."+key, "%v", err)
		}
		return n
	}
	media := cfg.MaxUploadBytes()
	if media == 0 {
		media = 50 << 20
	}
	rc.Limits = Limits{
		JSON:       size("max_request_size", rc.MaxRequestSize, DefaultMaxRequestSize),
		Federation: size("max_federation_request_size", rc.MaxFederationRequestSize, DefaultMaxFederationRequestSize),
		Media:      size("max_upload_size", rc.MaxUploadSize, media),
	}

	// Instance URLs: main from the shared listeners, workers from their
	// own files, then the explicit list, which wins.
	derived := map[string]InstanceURLs{}
	forwards := map[string]bool{}
	if u, ok := URLsFromListeners(cfg.MainListeners); ok {
		derived[config.MainInstance] = u
		forwards[config.MainInstance] = clientForwarded(cfg.MainListeners)
	}
	for i, wf := range rc.WorkerConfigs {
		key := fmt.Sprintf("router.worker_configs[%d]", i)
		path := wf
		if !filepath.IsAbs(path) && cfg.ConfigDir != "" {
			path = filepath.Join(cfg.ConfigDir, path)
		}
		name, u, ls, err := urlsFromWorkerFile(path)
		if err != nil {
			add(key, "%v", err)
			continue
		}
		derived[name] = u
		forwards[name] = clientForwarded(ls)
	}
	if rc.Instances == nil {
		rc.Instances = map[string]InstanceURLs{}
	}
	if m, ok := rc.Instances["master"]; ok {
		rc.Instances[config.MainInstance] = m
		delete(rc.Instances, "master")
	}
	rc.unforwarded = nil
	for _, name := range sortedKeys(derived) {
		if _, explicit := rc.Instances[name]; !explicit {
			rc.Instances[name] = derived[name]
			if !forwards[name] {
				rc.unforwarded = append(rc.unforwarded, name)
			}
		}
	}
	for _, name := range sortedKeys(rc.Instances) {
		u := rc.Instances[name]
		key := "router.instances." + name
		if u.ClientURL == "" {
			add(key+".client_url", "required")
		}
		for field, v := range map[string]string{"client_url": u.ClientURL, "federation_url": u.FederationURL, "media_url": u.MediaURL} {
			if v == "" {
				continue
			}
			if err := checkBackendURL(v); err != nil {
				add(key+"."+field, "%v", err)
			}
		}
	}
	if _, ok := rc.Instances[config.MainInstance]; !ok {
		add("router.instances.main.client_url", "required: the shared config's listeners have no client listener, "+
			"and main serves every endpoint no pool takes")
	}

	known := routes.PoolNames()
	for _, pool := range sortedKeys(rc.Pools) {
		key := "router.pools." + pool
		if !slices.Contains(known, pool) {
			add(key, "unknown pool; want one of %v", known)
			continue
		}
		members := rc.Pools[pool]
		if len(members) == 0 {
			add(key, "empty; remove the key to send this traffic to main")
		}
		if pool == routes.PoolSSO && len(members) > 1 {
			add(key, "one instance only: an SSO flow must finish on the process that started it")
		}
		for i, m := range members {
			if m == "master" {
				members[i] = config.MainInstance
				m = config.MainInstance
			}
			if _, ok := rc.Instances[m]; !ok {
				add(fmt.Sprintf("%s[%d]", key, i), "unknown instance %q: give its URL in router.instances or router.worker_configs", m)
			}
			if slices.Index(members, m) < i {
				add(fmt.Sprintf("%s[%d]", key, i), "instance %q listed twice", m)
			}
		}
	}
	if len(ps) > 0 {
		return &config.ValidationError{Problems: ps}
	}
	return nil
}

func checkBackendURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("invalid URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("want an http:// or https:// URL, got %q", s)
	}
	if u.Host == "" {
		return fmt.Errorf("URL %q has no host", s)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return fmt.Errorf("URL %q must not have a path or query", s)
	}
	return nil
}

// URLsFromListeners finds the client (and federation, media) listeners of
// an instance. A wildcard bind address is reached on loopback, which is
// right for a fleet on one host; elsewhere give router.instances.
func URLsFromListeners(ls []config.Listener) (InstanceURLs, bool) {
	var u InstanceURLs
	for _, l := range ls {
		if l.Type != "" && l.Type != "http" {
			continue
		}
		if u.ClientURL == "" && l.HasResource("client") {
			u.ClientURL = listenerURL(l)
		}
		if u.FederationURL == "" && l.HasResource("federation") {
			u.FederationURL = listenerURL(l)
		}
		if u.MediaURL == "" && l.HasResource("media") {
			u.MediaURL = listenerURL(l)
		}
	}
	if u.ClientURL == "" {
		// A federation- or media-only instance is still a backend for
		// those resources.
		u.ClientURL = u.FederationURL
		if u.ClientURL == "" {
			u.ClientURL = u.MediaURL
		}
	}
	if u.FederationURL == u.ClientURL {
		u.FederationURL = ""
	}
	if u.MediaURL == u.ClientURL {
		u.MediaURL = ""
	}
	return u, u.ClientURL != ""
}

func listenerURL(l config.Listener) string {
	host := "127.0.0.1"
	if len(l.BindAddresses) > 0 {
		switch a := l.BindAddresses[0]; a {
		case "", "0.0.0.0", "::":
		default:
			host = a
		}
	}
	scheme := "http"
	if l.TLS {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, strconv.Itoa(l.Port))
}

// clientForwarded reports whether the client listener of ls (the one
// URLsFromListeners picks) has x_forwarded: true.
func clientForwarded(ls []config.Listener) bool {
	for _, l := range ls {
		if (l.Type == "" || l.Type == "http") && l.HasResource("client") {
			return l.XForwarded
		}
	}
	return true // no client listener: no client traffic to attribute
}

func urlsFromWorkerFile(path string) (string, InstanceURLs, []config.Listener, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", InstanceURLs{}, nil, err
	}
	var w struct {
		WorkerName      string            `yaml:"worker_name"`
		WorkerListeners []config.Listener `yaml:"worker_listeners"`
	}
	if err := yaml.Unmarshal(data, &w); err != nil {
		return "", InstanceURLs{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	if w.WorkerName == "" {
		return "", InstanceURLs{}, nil, fmt.Errorf("%s: no worker_name", path)
	}
	u, ok := URLsFromListeners(w.WorkerListeners)
	if !ok {
		return "", InstanceURLs{}, nil, fmt.Errorf("%s: worker %s has no client, federation or media listener", path, w.WorkerName)
	}
	return w.WorkerName, u, w.WorkerListeners, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
