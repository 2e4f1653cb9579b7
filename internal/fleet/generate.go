package fleet

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"ganglion/internal/config"
	"ganglion/internal/router"
)

// Shared holds the fleet-wide keys that the shared config files already
// set. A nil field means the files leave that key unset, so the overlay
// generates it.
type Shared struct {
	InstanceMap   map[string]config.InstanceLocation
	StreamWriters map[string][]string
	// RouterPools reports whether the files set router.pools; if not, a
	// router instance gets pools derived from the deployment.
	RouterPools bool
	// Pushers reports whether the files set pusher_instances or
	// start_pushers; if not, the deployment's pusher workers become
	// pusher_instances.
	Pushers bool
	// FederationSenders likewise for federation_sender_instances and
	// send_federation.
	FederationSenders bool
}

// ReadShared reads instance_map and stream_writers from the shared config
// files, later files overriding earlier ones entry by entry as config.Load
// merges them.
func ReadShared(paths []string) (Shared, error) {
	var s Shared
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return Shared{}, fmt.Errorf("read shared config: %w", err)
		}
		var doc struct {
			InstanceMap   map[string]config.InstanceLocation `yaml:"instance_map"`
			StreamWriters map[string]config.StringList       `yaml:"stream_writers"`
			Router        struct {
				Pools map[string]any `yaml:"pools"`
			} `yaml:"router"`
			PusherInstances any `yaml:"pusher_instances"`
			StartPushers    any `yaml:"start_pushers"`
			FedSenders      any `yaml:"federation_sender_instances"`
			SendFederation  any `yaml:"send_federation"`
		}
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return Shared{}, fmt.Errorf("read shared config %s: %w", p, err)
		}
		s.RouterPools = s.RouterPools || doc.Router.Pools != nil
		s.Pushers = s.Pushers || doc.PusherInstances != nil || doc.StartPushers != nil
		s.FederationSenders = s.FederationSenders || doc.FedSenders != nil || doc.SendFederation != nil
		if doc.InstanceMap != nil && s.InstanceMap == nil {
			s.InstanceMap = map[string]config.InstanceLocation{}
		}
		for k, v := range doc.InstanceMap {
			s.InstanceMap[canonical(k)] = v
		}
		if doc.StreamWriters != nil && s.StreamWriters == nil {
			s.StreamWriters = map[string][]string{}
		}
		for k, v := range doc.StreamWriters {
			ws := make([]string, len(v))
			for i, w := range v {
				ws[i] = canonical(w)
			}
			s.StreamWriters[k] = ws
		}
	}
	return s, nil
}

// canonical maps Synapse's "master" to "main".
func canonical(name string) string {
	if name == "master" {
		return config.MainInstance
	}
	return name
}

// Plan is what `up` runs: the generated files and, per instance, how to
// start and probe it.
type Plan struct {
	// Dir is where Files are to be written.
	Dir       string
	Files     []File
	Instances []PlannedInstance
}

// File is one generated config file, named relative to Plan.Dir.
type File struct {
	Name string
	Data []byte
}

// PlannedInstance is one process of the plan.
type PlannedInstance struct {
	Name string
	Role string
	// ConfigFiles are the -c arguments of `ganglion serve`, in order: the
	// shared files, the overlay, the instance's own file.
	ConfigFiles []string
	// HealthURL is /health on the instance's first listener ("" if it has
	// none).
	HealthURL string
	// Replication is the instance's entry in instance_map (nil without a
	// replication listener).
	Replication *config.InstanceLocation
}

// ServeArgs are the arguments after the binary that run the instance.
func (p PlannedInstance) ServeArgs() []string {
	args := []string{"serve"}
	for _, f := range p.ConfigFiles {
		args = append(args, "-c", f)
	}
	return args
}

// Generate turns a validated deployment into the overlay fleet.yaml (the
// instance_map, stream_writers and pusher_instances every instance shares) and one file per
// instance (worker_app, worker_name, worker_listeners; listeners for
// main), to be written into dir. Keys the shared config already sets are
// left out of the overlay, after checking that they agree with the
// deployment. It does no I/O.
func Generate(d *Deployment, shared Shared, dir string) (*Plan, error) {
	instanceMap := map[string]config.InstanceLocation{}
	planned := make([]PlannedInstance, 0, len(d.Instances))
	writers := map[string][]string{}
	var pushers, fedSenders []string
	shared0 := d.ConfigPaths()
	for _, in := range d.Instances {
		switch in.Role() {
		case config.RolePusher:
			pushers = append(pushers, in.Name)
		case config.RoleFederationSender:
			fedSenders = append(fedSenders, in.Name)
		}
		pi := PlannedInstance{Name: in.Name, Role: in.Role(),
			ConfigFiles: append(slices.Clone(shared0), filepath.Join(dir, OverlayFile), filepath.Join(dir, in.Name+".yaml"))}
		if len(in.Listeners) > 0 {
			l := in.Listeners[0]
			pi.HealthURL = "http://" + net.JoinHostPort(connectHost(d.bind(l)), strconv.Itoa(l.Port)) + "/health"
		}
		if l, ok := in.replicationListener(); ok {
			loc := config.InstanceLocation{Host: connectHost(d.bind(l)), Port: l.Port}
			instanceMap[in.Name] = loc
			pi.Replication = &loc
		}
		for _, s := range in.StreamWriters {
			writers[s] = append(writers[s], in.Name)
		}
		planned = append(planned, pi)
	}

	var ps problems
	overlay := overlayDoc{}
	if shared.InstanceMap == nil {
		overlay.InstanceMap = map[string]locationDoc{}
		for name, loc := range instanceMap {
			overlay.InstanceMap[name] = locationDoc{Host: loc.Host, Port: loc.Port}
		}
	} else {
		compareInstanceMap(&ps, shared.InstanceMap, instanceMap)
	}
	if shared.StreamWriters == nil {
		overlay.StreamWriters = writersDoc{
			Events: writers[config.StreamEvents], Typing: writers[config.StreamTyping],
			ToDevice: writers[config.StreamToDevice], AccountData: writers[config.StreamAccountData],
			Receipts: writers[config.StreamReceipts], Presence: writers[config.StreamPresence],
			PushRules: writers[config.StreamPushRules], DeviceLists: writers[config.StreamDeviceLists],
		}
	} else {
		compareWriters(&ps, shared.StreamWriters, writers)
	}
	if len(pushers) > 0 && !shared.Pushers {
		// The modern key, so that several pusher workers share the users
		// between them (the legacy start_pushers: false would have each
		// believe it is the only one and send everything).
		overlay.PusherInstances = pushers
	}
	if len(fedSenders) > 0 && !shared.FederationSenders {
		// Likewise: destinations are sharded over the senders in this
		// order, and main stops sending.
		overlay.FederationSenderInstances = fedSenders
	}
	if len(ps) > 0 {
		return nil, fmt.Errorf("the shared config disagrees with %s; fix it, or remove those keys from the shared "+
			"config and let the deployment generate them:\n%w", d.File, &config.ValidationError{Problems: ps})
	}

	header := fmt.Sprintf("# Generated by `ganglion up` from %s; do not edit: change the deployment file and regenerate.\n", d.File)
	files := []File{}
	data, err := render(header, overlay)
	if err != nil {
		return nil, err
	}
	files = append(files, File{Name: OverlayFile, Data: data})
	fronted := slices.ContainsFunc(d.Instances, func(in Instance) bool { return in.Role() == config.RoleRouter })
	for _, in := range d.Instances {
		ls := make([]listenerDoc, len(in.Listeners))
		for i, l := range in.Listeners {
			ls[i] = listenerDoc{Type: "http", Port: l.Port, BindAddresses: []string{d.bind(l)}, XForwarded: l.XForwarded,
				Resources: []resourceDoc{{Names: slices.Clone(l.Resources)}}}
			if fronted && in.Role() != config.RoleRouter && slices.Contains(l.Resources, "client") {
				// Behind the router every client would share its address,
				// and one client's failed logins would lock everyone out:
				// the router reports the client in X-Forwarded-For, and
				// the listener believes it from the router only. The
				// router runs on this host and connects from loopback (the
				// default trust), or from the listener's own address when
				// it is bound elsewhere.
				ls[i].XForwarded = true
				if h := connectHost(d.bind(l)); !isLoopbackHost(h) {
					ls[i].TrustedProxies = []string{"127.0.0.1", "::1", h}
				}
			}
		}
		var doc any
		switch {
		case in.IsMain():
			doc = mainDoc{Listeners: ls}
		case in.Role() == config.RoleRouter:
			doc = d.routerDoc(in, shared)
		default:
			doc = workerDoc{App: in.Role(), Name: in.Name, Listeners: ls}
		}
		data, err := render(header, doc)
		if err != nil {
			return nil, err
		}
		files = append(files, File{Name: in.Name + ".yaml", Data: data})
	}
	return &Plan{Dir: dir, Files: files, Instances: planned}, nil
}

// routerDoc is a router instance's file: its listener, every other
// instance's HTTP listeners, and (unless the shared config sets
// router.pools) pools derived from the deployment: client-facing generic
// workers serve sync, event sending and everything else; media workers
// serve media. Without client-facing workers everything goes to main.
func (d *Deployment) routerDoc(in Instance, shared Shared) routerFileDoc {
	l := in.Listeners[0]
	sec := routerSectionDoc{
		Listen:    routerListenDoc{Port: l.Port, BindAddress: d.bind(l), XForwarded: l.XForwarded},
		Instances: map[string]routerInstanceDoc{},
	}
	if len(in.Listeners) > 1 {
		m := in.Listeners[1]
		sec.MetricsListen = &routerListenDoc{Port: m.Port, BindAddress: d.bind(m)}
	}
	var clientWorkers, mediaWorkers, fedWorkers []string
	for _, other := range d.Instances {
		if other.Role() == config.RoleRouter {
			continue
		}
		// The same URL rules as a router reading the instances' own files.
		ls := make([]config.Listener, len(other.Listeners))
		for i, ol := range other.Listeners {
			ls[i] = config.Listener{Port: ol.Port, BindAddresses: []string{connectHost(d.bind(ol))}, Type: "http",
				Resources: []config.ListenerResource{{Names: ol.Resources}}}
		}
		u, ok := router.URLsFromListeners(ls)
		if !ok {
			continue // not reachable over HTTP: replication only
		}
		sec.Instances[other.Name] = routerInstanceDoc{ClientURL: u.ClientURL, FederationURL: u.FederationURL, MediaURL: u.MediaURL}
		switch other.Role() {
		case config.RoleGenericWorker:
			if slices.ContainsFunc(other.Listeners, func(ol Listener) bool { return slices.Contains(ol.Resources, "client") }) {
				clientWorkers = append(clientWorkers, other.Name)
			}
			if slices.ContainsFunc(other.Listeners, func(ol Listener) bool { return slices.Contains(ol.Resources, "federation") }) {
				fedWorkers = append(fedWorkers, other.Name)
			}
		case config.RoleMediaRepository:
			mediaWorkers = append(mediaWorkers, other.Name)
		}
	}
	if !shared.RouterPools {
		sec.Pools = map[string][]string{}
		if len(clientWorkers) > 0 {
			sec.Pools["sync"] = clientWorkers
			sec.Pools["client"] = clientWorkers
			sec.Pools["events"] = clientWorkers
		}
		if len(mediaWorkers) > 0 {
			sec.Pools["media"] = mediaWorkers
		}
		if len(fedWorkers) > 0 {
			// Other servers' requests: reads spread, inbound /send sticky
			// by origin (the routing table's policy for that class).
			sec.Pools["federation"] = fedWorkers
			sec.Pools["federation_inbound"] = fedWorkers
		}
	}
	return routerFileDoc{App: config.RoleRouter, Name: in.Name, Router: sec}
}

func (d *Deployment) bind(l Listener) string {
	if l.BindAddress != "" {
		return l.BindAddress
	}
	return d.BindAddress
}

// connectHost is where to connect to reach a listener bound to addr: the
// loopback address for a wildcard bind (the fleet shares one host).
func connectHost(addr string) string {
	switch addr {
	case "0.0.0.0", "":
		return "127.0.0.1"
	case "::":
		return "::1"
	}
	return addr
}

func isLoopbackHost(h string) bool {
	ip := net.ParseIP(h)
	return h == "localhost" || (ip != nil && ip.IsLoopback())
}

func compareInstanceMap(ps *problems, shared, want map[string]config.InstanceLocation) {
	for _, name := range slices.Sorted(maps.Keys(want)) {
		w := want[name]
		got, ok := shared[name]
		switch {
		case !ok:
			ps.add("instance_map."+name, "missing from the shared config; the deployment gives %s", fmtLoc(w))
		case got.Host != w.Host || got.Port != w.Port || got.Path != "" || got.TLS:
			ps.add("instance_map."+name, "the shared config says %s, the deployment gives %s", fmtLoc(got), fmtLoc(w))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(shared)) {
		if _, ok := want[name]; !ok {
			ps.add("instance_map."+name, "in the shared config but not an instance of the deployment with a replication listener")
		}
	}
}

func fmtLoc(l config.InstanceLocation) string {
	if l.Path != "" {
		return "unix:" + l.Path
	}
	s := net.JoinHostPort(l.Host, strconv.Itoa(l.Port))
	if l.TLS {
		s += " (tls)"
	}
	return s
}

func compareWriters(ps *problems, shared, want map[string][]string) {
	orMain := func(ws []string) []string {
		if ws == nil {
			return []string{config.MainInstance}
		}
		return ws
	}
	for _, s := range streamNames() {
		got, w := orMain(shared[s]), orMain(want[s])
		if !slices.Equal(got, w) {
			ps.add("stream_writers."+s, "the shared config says [%s], the deployment says [%s]",
				strings.Join(got, ", "), strings.Join(w, ", "))
		}
	}
}

// The documents written, with keys in a readable order.
type (
	overlayDoc struct {
		InstanceMap   map[string]locationDoc `yaml:"instance_map,omitempty"`
		StreamWriters writersDoc             `yaml:"stream_writers,omitempty"`
		// PusherInstances: the pusher workers, when there are any.
		PusherInstances []string `yaml:"pusher_instances,omitempty"`
		// FederationSenderInstances: the federation sender workers.
		FederationSenderInstances []string `yaml:"federation_sender_instances,omitempty"`
	}
	locationDoc struct {
		Host string `yaml:"host"`
		Port int    `yaml:"port"`
	}
	writersDoc struct {
		Events      []string `yaml:"events,omitempty"`
		Typing      []string `yaml:"typing,omitempty"`
		ToDevice    []string `yaml:"to_device,omitempty"`
		AccountData []string `yaml:"account_data,omitempty"`
		Receipts    []string `yaml:"receipts,omitempty"`
		Presence    []string `yaml:"presence,omitempty"`
		PushRules   []string `yaml:"push_rules,omitempty"`
		DeviceLists []string `yaml:"device_lists,omitempty"`
	}
	mainDoc struct {
		Listeners []listenerDoc `yaml:"listeners"`
	}
	workerDoc struct {
		App       string        `yaml:"worker_app"`
		Name      string        `yaml:"worker_name"`
		Listeners []listenerDoc `yaml:"worker_listeners"`
	}
	routerFileDoc struct {
		App    string           `yaml:"worker_app"`
		Name   string           `yaml:"worker_name"`
		Router routerSectionDoc `yaml:"router"`
	}
	routerSectionDoc struct {
		Listen        routerListenDoc              `yaml:"listen"`
		MetricsListen *routerListenDoc             `yaml:"metrics_listen,omitempty"`
		Instances     map[string]routerInstanceDoc `yaml:"instances"`
		Pools         map[string][]string          `yaml:"pools,omitempty"`
	}
	routerListenDoc struct {
		Port        int    `yaml:"port"`
		BindAddress string `yaml:"bind_address"`
		XForwarded  bool   `yaml:"x_forwarded,omitempty"`
	}
	routerInstanceDoc struct {
		ClientURL     string `yaml:"client_url"`
		FederationURL string `yaml:"federation_url,omitempty"`
		MediaURL      string `yaml:"media_url,omitempty"`
	}
	listenerDoc struct {
		Type           string        `yaml:"type"`
		Port           int           `yaml:"port"`
		BindAddresses  []string      `yaml:"bind_addresses"`
		XForwarded     bool          `yaml:"x_forwarded,omitempty"`
		TrustedProxies []string      `yaml:"x_forwarded_trusted_proxies,omitempty"`
		Resources      []resourceDoc `yaml:"resources"`
	}
	resourceDoc struct {
		Names []string `yaml:"names"`
	}
)

// render writes doc as YAML after header, one listener or instance per
// line (flow style), as hand-written worker files usually are.
func render(header string, doc any) ([]byte, error) {
	var n yaml.Node
	if err := n.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode generated config: %w", err)
	}
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			v := n.Content[i+1]
			switch v.Kind {
			case yaml.SequenceNode:
				for _, item := range v.Content {
					item.Style = yaml.FlowStyle
				}
			case yaml.MappingNode:
				flowLeaves(v)
			}
		}
	}
	var b bytes.Buffer
	b.WriteString(header)
	if n.Kind == yaml.MappingNode && len(n.Content) == 0 {
		b.WriteString("# (nothing: the shared config sets instance_map and stream_writers)\n")
		return b.Bytes(), nil
	}
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, fmt.Errorf("encode generated config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode generated config: %w", err)
	}
	return b.Bytes(), nil
}

// flowLeaves puts each innermost mapping or list of a nested mapping on
// one line ({host: …, port: …}, [a, b]) and keeps the levels above it as
// blocks.
func flowLeaves(n *yaml.Node) {
	for j := 1; j < len(n.Content); j += 2 {
		v := n.Content[j]
		if v.Kind == yaml.MappingNode && !scalarsOnly(v) {
			flowLeaves(v)
		} else {
			v.Style = yaml.FlowStyle
		}
	}
}

func scalarsOnly(n *yaml.Node) bool {
	for i := 1; i < len(n.Content); i += 2 {
		if n.Content[i].Kind != yaml.ScalarNode {
			return false
		}
	}
	return true
}

// WriteFiles writes the plan's files into p.Dir, each atomically, so a
// process starting meanwhile never reads half a file.
func WriteFiles(p *Plan) error {
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", p.Dir, err)
	}
	for _, f := range p.Files {
		path := filepath.Join(p.Dir, f.Name)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, f.Data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return nil
}

// Prepare loads the deployment file at path, reads the shared config files
// it names and plans the fleet with its files to be written into dir (""
// means the deployment's run_dir).
func Prepare(path, dir string) (*Deployment, *Plan, error) {
	d, err := Load(path)
	if err != nil {
		return nil, nil, err
	}
	shared, err := ReadShared(d.ConfigPaths())
	if err != nil {
		return nil, nil, err
	}
	if dir == "" {
		dir = d.RunDirPath()
	}
	p, err := Generate(d, shared, dir)
	if err != nil {
		return nil, nil, err
	}
	return d, p, nil
}

// LoadConfigs loads every instance's config set, as `ganglion serve` will,
// from the written plan files; env is usually os.Getenv. It reports the
// problems of all instances at once.
func LoadConfigs(p *Plan, env func(string) string) (map[string]*config.Config, error) {
	out := map[string]*config.Config{}
	var errs []string
	for _, in := range p.Instances {
		cfg, err := config.Load(in.ConfigFiles, env)
		if err != nil {
			errs = append(errs, fmt.Sprintf("instance %s (%s):\n%s", in.Name,
				strings.Join(in.ConfigFiles, " + "), indent(err.Error())))
			continue
		}
		out[in.Name] = cfg
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("generated configs do not load:\n%s", strings.Join(errs, "\n"))
	}
	return out, nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

// IsDeployment reports whether the YAML file at path is a deployment file
// (it has a top-level instances key) rather than a homeserver config.
func IsDeployment(path string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	var top map[string]yaml.Node
	if err := yaml.Unmarshal(data, &top); err != nil {
		return false, fmt.Errorf("parse %s: %w", path, err)
	}
	_, ok := top["instances"]
	return ok, nil
}
