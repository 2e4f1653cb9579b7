// Package fleet runs a whole Ganglion fleet on one host: it reads a
// deployment file (the one place for instance names, roles and ports),
// generates the per-instance config files that `ganglion serve` reads, and
// supervises the processes (`ganglion up`). It also writes systemd units for
// the same processes and asks every instance for its status.
//
// The generated files are ordinary Synapse-style worker configs: an admin
// who does not want `up` runs each process with
// `ganglion serve -c <shared…> -c fleet.yaml -c <name>.yaml`.
package fleet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"ganglion/internal/config"
)

// Defaults of the deployment file.
const (
	DefaultBindAddress    = "127.0.0.1"
	DefaultRunDir         = ".ganglion-up"
	DefaultMinBackoff     = time.Second
	DefaultMaxBackoff     = 30 * time.Second
	DefaultResetAfter     = 30 * time.Second
	DefaultStartupTimeout = 2 * time.Minute
	DefaultStopTimeout    = 15 * time.Second
)

// OverlayFile is the generated file shared by every instance of the fleet
// (instance_map, stream_writers); no instance may take its name.
const OverlayFile = "fleet.yaml"

// Deployment is a parsed deployment file.
type Deployment struct {
	// Config lists the shared config files, relative to the deployment file.
	Config []string `yaml:"config"`
	// BindAddress is the default bind address of every listener.
	BindAddress string `yaml:"bind_address"`
	// RunDir holds the generated files and the logs, relative to the
	// deployment file.
	RunDir    string     `yaml:"run_dir"`
	Instances []Instance `yaml:"instances"`
	Restart   Restart    `yaml:"restart"`
	// StartupTimeout bounds the wait for the main process's /health at
	// start (it migrates the database first).
	StartupTimeout time.Duration `yaml:"startup_timeout"`
	// StopTimeout bounds the wait for the instances to exit after SIGTERM;
	// stragglers are killed.
	StopTimeout time.Duration `yaml:"stop_timeout"`

	// Dir is the absolute directory of the deployment file; File its base
	// name. Set by Parse.
	Dir  string `yaml:"-"`
	File string `yaml:"-"`
}

// Instance is one process of the fleet.
type Instance struct {
	Name string `yaml:"name"`
	// App is the worker_app, in any spelling config.NormalizeWorkerApp
	// accepts; empty for the instance named main.
	App       string     `yaml:"app"`
	Listeners []Listener `yaml:"listeners"`
	// StreamWriters lists the streams this instance writes. For events,
	// whose writers shard rooms by list position, the order of the
	// instances in the file is the order of stream_writers.events.
	StreamWriters []string `yaml:"stream_writers"`
}

// Listener is one HTTP listener of an instance.
type Listener struct {
	Port      int      `yaml:"port"`
	Resources []string `yaml:"resources"`
	// BindAddress overrides the deployment's bind_address.
	BindAddress string `yaml:"bind_address"`
	XForwarded  bool   `yaml:"x_forwarded"`
}

// Restart is the restart policy of `up`: exponential backoff from
// MinBackoff to MaxBackoff, back to MinBackoff once an instance has stayed
// up for ResetAfter.
type Restart struct {
	MinBackoff time.Duration `yaml:"min_backoff"`
	MaxBackoff time.Duration `yaml:"max_backoff"`
	ResetAfter time.Duration `yaml:"reset_after"`
}

// Load reads and validates a deployment file.
func Load(path string) (*Deployment, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read deployment: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes a deployment file's contents (path locates relative
// paths and names the file in errors), applies the defaults and validates
// it. Validation problems come back together as a *config.ValidationError
// with key paths ("instances[2].listeners[0].port").
func Parse(data []byte, path string) (*Deployment, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("deployment %s: %w", path, err)
	}
	d := &Deployment{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	// A misspelt key would silently fall back to a default; for a file that
	// decides ports and roles that is worse than an error.
	dec.KnownFields(true)
	// io.EOF is an empty file: validation then says what is missing.
	if err := dec.Decode(d); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("deployment %s: %w", path, err)
	}
	d.Dir, d.File = filepath.Dir(abs), filepath.Base(abs)
	d.applyDefaults()
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("deployment %s:\n%w", path, err)
	}
	return d, nil
}

func (d *Deployment) applyDefaults() {
	if d.BindAddress == "" {
		d.BindAddress = DefaultBindAddress
	}
	if d.RunDir == "" {
		d.RunDir = DefaultRunDir
	}
	if d.Restart.MinBackoff == 0 {
		d.Restart.MinBackoff = DefaultMinBackoff
	}
	if d.Restart.MaxBackoff == 0 {
		d.Restart.MaxBackoff = max(DefaultMaxBackoff, d.Restart.MinBackoff)
	}
	if d.Restart.ResetAfter == 0 {
		d.Restart.ResetAfter = DefaultResetAfter
	}
	if d.StartupTimeout == 0 {
		d.StartupTimeout = DefaultStartupTimeout
	}
	if d.StopTimeout == 0 {
		d.StopTimeout = DefaultStopTimeout
	}
}

// ConfigPaths are the shared config files, absolute.
func (d *Deployment) ConfigPaths() []string {
	out := make([]string, len(d.Config))
	for i, c := range d.Config {
		out[i] = d.abs(c)
	}
	return out
}

// RunDirPath is run_dir, absolute.
func (d *Deployment) RunDirPath() string { return d.abs(d.RunDir) }

func (d *Deployment) abs(p string) string {
	if filepath.IsAbs(p) || d.Dir == "" {
		return p
	}
	return filepath.Join(d.Dir, p)
}

// Role is the instance's normalised worker role.
func (in Instance) Role() string {
	if in.Name == config.MainInstance {
		return config.RoleMain
	}
	role, _ := config.NormalizeWorkerApp(in.App)
	return role
}

// IsMain reports whether this is the main process.
func (in Instance) IsMain() bool { return in.Name == config.MainInstance }

// replicationListener returns the instance's listener with the replication
// resource, if any.
func (in Instance) replicationListener() (Listener, bool) {
	for _, l := range in.Listeners {
		if slices.Contains(l.Resources, "replication") {
			return l, true
		}
	}
	return Listener{}, false
}

// knownResources are the listener resources config.Validate accepts.
func knownResources() []string { return config.KnownResources() }

// writerStreams are the streams that take writers, in config order, and
// whether several instances may write each.
func writerStreams() []struct {
	name  string
	multi bool
} {
	return []struct {
		name  string
		multi bool
	}{
		{config.StreamEvents, true}, {config.StreamTyping, false}, {config.StreamToDevice, false},
		{config.StreamAccountData, false}, {config.StreamReceipts, false}, {config.StreamPresence, false},
		{config.StreamPushRules, false}, {config.StreamDeviceLists, true},
	}
}

func streamNames() []string {
	var out []string
	for _, s := range writerStreams() {
		out = append(out, s.name)
	}
	return out
}

type problems []config.Problem

func (ps *problems) add(path, format string, args ...any) {
	*ps = append(*ps, config.Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// Validate checks the deployment and returns a *config.ValidationError
// listing every problem, or nil. Defaults must already be applied.
func (d *Deployment) Validate() error {
	var ps problems
	if len(d.Config) == 0 {
		ps.add("config", "required: the shared config file(s), e.g. [homeserver.yaml]")
	}
	for i, c := range d.Config {
		if strings.TrimSpace(c) == "" {
			ps.add(fmt.Sprintf("config[%d]", i), "empty file name")
		}
	}
	if err := checkHost(d.BindAddress); err != nil {
		ps.add("bind_address", "%v", err)
	}
	d.validateInstances(&ps)
	if d.Restart.MinBackoff < 0 {
		ps.add("restart.min_backoff", "must be positive, got %v", d.Restart.MinBackoff)
	}
	if d.Restart.MaxBackoff < d.Restart.MinBackoff {
		ps.add("restart.max_backoff", "%v is less than min_backoff %v", d.Restart.MaxBackoff, d.Restart.MinBackoff)
	}
	if d.Restart.ResetAfter < 0 {
		ps.add("restart.reset_after", "must be positive, got %v", d.Restart.ResetAfter)
	}
	if d.StartupTimeout < 0 {
		ps.add("startup_timeout", "must be positive, got %v", d.StartupTimeout)
	}
	if d.StopTimeout < 0 {
		ps.add("stop_timeout", "must be positive, got %v", d.StopTimeout)
	}
	if len(ps) == 0 {
		return nil
	}
	return &config.ValidationError{Problems: ps}
}

func (d *Deployment) validateInstances(ps *problems) {
	if len(d.Instances) == 0 {
		ps.add("instances", "required: at least the main process (name: main)")
		return
	}
	names := map[string]int{}
	ports := map[int]string{}
	writers := map[string][]string{} // stream → instance names
	hasMain, hasWorkers := false, false
	for i, in := range d.Instances {
		p := fmt.Sprintf("instances[%d]", i)
		switch {
		case in.Name == "":
			ps.add(p+".name", "required")
		case !validName(in.Name):
			ps.add(p+".name", "%q: use letters, digits, '_', '-' and '.', starting with a letter or digit "+
				"(it names files and systemd units)", in.Name)
		case in.Name == "master":
			ps.add(p+".name", "\"master\" is an alias of the main process; call it main")
		case in.Name+".yaml" == OverlayFile:
			ps.add(p+".name", "%q is reserved for the generated %s", in.Name, OverlayFile)
		}
		if j, dup := names[in.Name]; dup && in.Name != "" {
			ps.add(p+".name", "duplicate instance name %q (also instances[%d])", in.Name, j)
		} else {
			names[in.Name] = i
		}

		role, ok := config.NormalizeWorkerApp(in.App)
		switch {
		case in.IsMain():
			hasMain = true
			if role != config.RoleMain {
				ps.add(p+".app", "the instance named main is the main process; it takes no worker app, got %q", in.App)
			}
		case in.App == "":
			ps.add(p+".app", "required for a worker, e.g. generic_worker")
		case !ok:
			ps.add(p+".app", "unknown worker app %q; want generic_worker, media_repository, pusher, "+
				"federation_sender, appservice, user_dir or router (optionally prefixed synapse.app. or ganglion.app.)", in.App)
		case role == config.RoleMain:
			ps.add(p+".app", "%q is the main process; only the instance named main may be it", in.App)
		default:
			hasWorkers = true
		}

		replication := 0
		for j, l := range in.Listeners {
			lp := fmt.Sprintf("%s.listeners[%d]", p, j)
			if l.Port < 1 || l.Port > 65535 {
				ps.add(lp+".port", "must be between 1 and 65535, got %d", l.Port)
			} else if other, dup := ports[l.Port]; dup {
				ps.add(lp+".port", "port %d is already used by %s", l.Port, other)
			} else {
				ports[l.Port] = fmt.Sprintf("%s (%s)", lp, orUnnamed(in.Name))
			}
			if l.BindAddress != "" {
				if err := checkHost(l.BindAddress); err != nil {
					ps.add(lp+".bind_address", "%v", err)
				}
			}
			if len(l.Resources) == 0 {
				ps.add(lp+".resources", "required, e.g. [client] or [replication, metrics]")
			}
			for k, r := range l.Resources {
				if !slices.Contains(knownResources(), r) {
					ps.add(fmt.Sprintf("%s.resources[%d]", lp, k), "unknown resource %q; want one of %s",
						r, strings.Join(knownResources(), ", "))
				}
			}
			if slices.Contains(l.Resources, "replication") {
				replication++
			}
		}
		if replication > 1 {
			ps.add(p+".listeners", "%d listeners with the replication resource; instance_map holds one per instance", replication)
		}
		if in.Role() == config.RoleRouter {
			checkRouter(ps, p, in)
		}
		if in.IsMain() && len(in.Listeners) == 0 {
			ps.add(p+".listeners", "the main process needs a listener: up waits for its /health")
		}

		seen := map[string]bool{}
		for k, s := range in.StreamWriters {
			sp := fmt.Sprintf("%s.stream_writers[%d]", p, k)
			if !slices.Contains(streamNames(), s) {
				ps.add(sp, "unknown stream %q; want one of %s", s, strings.Join(streamNames(), ", "))
				continue
			}
			if seen[s] {
				ps.add(sp, "%q listed twice", s)
				continue
			}
			seen[s] = true
			writers[s] = append(writers[s], in.Name)
		}
		// Other processes forward writes to a stream's writer over HTTP
		// replication, so the writer must be in instance_map.
		if len(in.StreamWriters) > 0 && !in.IsMain() && replication == 0 {
			ps.add(p+".stream_writers", "a stream writer needs a listener with the replication resource "+
				"(other instances forward writes to it)")
		}
	}
	if !hasMain {
		ps.add("instances", "no instance named main: the main process is required")
	}
	if hasMain && hasWorkers {
		if main, _ := d.Instance(config.MainInstance); main != nil {
			if _, ok := main.replicationListener(); !ok {
				ps.add(fmt.Sprintf("instances[%d].listeners", names[config.MainInstance]),
					"workers reach the main process through instance_map.main: give main a listener with the replication resource")
			}
		}
	}
	for _, s := range writerStreams() {
		if w := writers[s.name]; !s.multi && len(w) > 1 {
			ps.add("instances", "stream %s: only one writer allowed, got %d (%s)", s.name, len(w), strings.Join(w, ", "))
		}
	}
}

// checkRouter validates a router instance: its first listener is the
// proxy's (clients connect to it), an optional second one with the metrics
// resource serves the router's metrics; it writes no stream and is no
// replication peer.
func checkRouter(ps *problems, p string, in Instance) {
	switch {
	case len(in.Listeners) == 0:
		ps.add(p+".listeners", "a router needs a listener: the port clients connect to")
	case len(in.Listeners) > 2:
		ps.add(p+".listeners", "a router has one listener for clients and optionally one for metrics, got %d", len(in.Listeners))
	}
	for j, l := range in.Listeners {
		lp := fmt.Sprintf("%s.listeners[%d].resources", p, j)
		for _, r := range l.Resources {
			switch {
			case r == "replication":
				ps.add(lp, "a router is not a replication peer; drop the replication resource")
			case j == 0 && r == "metrics":
				ps.add(lp, "the first listener of a router is the proxy; put metrics on a second listener")
			case j == 1 && r != "metrics":
				ps.add(lp, "the second listener of a router serves metrics only, got %q", r)
			}
		}
	}
	if len(in.StreamWriters) > 0 {
		ps.add(p+".stream_writers", "a router writes no stream")
	}
}

// Instance returns the instance called name and its index.
func (d *Deployment) Instance(name string) (*Instance, int) {
	for i := range d.Instances {
		if d.Instances[i].Name == name {
			return &d.Instances[i], i
		}
	}
	return nil, -1
}

func orUnnamed(name string) string {
	if name == "" {
		return "unnamed"
	}
	return name
}

func validName(s string) bool {
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case i > 0 && (r == '_' || r == '-' || r == '.'):
		default:
			return false
		}
	}
	return s != "" && len(s) <= 64
}

// checkHost accepts an IP address or a host name.
func checkHost(h string) error {
	if h == "" {
		return errors.New("empty address")
	}
	if net.ParseIP(h) != nil {
		return nil
	}
	if strings.Trim(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != "" || len(h) > 253 {
		return fmt.Errorf("%q is not an IP address or host name", h)
	}
	return nil
}
