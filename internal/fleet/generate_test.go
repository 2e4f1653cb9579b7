package fleet_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ganglion/internal/config"
	"ganglion/internal/fleet"
	"ganglion/internal/router"
)

var update = flag.Bool("update", false, "rewrite examples/fleet/workers from examples/fleet/deployment.yaml")

// sharedBase is a shared config that passes validation for workers.
const sharedBase = `server_name: fleet.test
database: {name: psycopg2, args: {host: 127.0.0.1, database: ganglion, user: ganglion}}
redis: {enabled: true}
worker_replication_secret: s3cret
`

// writeDeployment writes homeserver.yaml (sharedBase + extra) and
// deployment.yaml into a fresh directory and returns the deployment's path.
func writeDeployment(t *testing.T, deployment, extraShared string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "homeserver.yaml"), []byte(sharedBase+extraShared), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "deployment.yaml")
	if err := os.WriteFile(path, []byte(deployment), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestGenerate(t *testing.T) {
	// persister2 comes before persister1 in the file: events order is
	// instance order, not name order.
	const deployment = `
config: [homeserver.yaml]
instances:
  - name: main
    listeners: [{port: 8008, resources: [client]}, {port: 9093, resources: [replication, metrics]}]
  - name: persister2
    app: generic_worker
    listeners: [{port: 9095, resources: [replication]}]
    stream_writers: [events]
  - name: persister1
    app: synapse.app.generic_worker
    listeners: [{port: 9094, resources: [replication]}]
    stream_writers: [events]
  - name: writer1
    app: generic_worker
    listeners: [{port: 9096, resources: [replication, metrics]}]
    stream_writers: [typing, to_device, account_data, receipts, presence]
  - name: worker1
    app: synapse.app.client_reader
    listeners: [{port: 8081, resources: [client], x_forwarded: true}, {port: 9097, bind_address: 0.0.0.0, resources: [replication]}]
  - name: media1
    app: synapse.app.media_repository
`
	wantMap := map[string]config.InstanceLocation{
		"main":       {Host: "127.0.0.1", Port: 9093},
		"persister1": {Host: "127.0.0.1", Port: 9094},
		"persister2": {Host: "127.0.0.1", Port: 9095},
		"writer1":    {Host: "127.0.0.1", Port: 9096},
		"worker1":    {Host: "127.0.0.1", Port: 9097},
	}
	wantWriters := map[string][]string{
		config.StreamEvents: {"persister2", "persister1"}, config.StreamTyping: {"writer1"},
		config.StreamToDevice: {"writer1"}, config.StreamAccountData: {"writer1"},
		config.StreamReceipts: {"writer1"}, config.StreamPresence: {"writer1"},
		config.StreamPushRules: {"main"}, config.StreamDeviceLists: {"main"},
	}
	sharedMap := `instance_map:
  master: {host: 127.0.0.1, port: 9093}
  persister1: {host: 127.0.0.1, port: 9094}
  persister2: {host: 127.0.0.1, port: 9095}
  writer1: {host: 127.0.0.1, port: 9096}
  worker1: {host: 127.0.0.1, port: 9097}
`
	sharedWriters := `stream_writers:
  events: [persister2, persister1]
  typing: writer1
  to_device: writer1
  account_data: writer1
  receipts: writer1
  presence: writer1
`
	tests := []struct {
		name        string
		shared      string
		wantOverlay []string // keys the overlay must set
		wantErr     []string
	}{
		{name: "shared sets nothing", wantOverlay: []string{"instance_map", "stream_writers"}},
		{name: "shared sets instance_map", shared: sharedMap, wantOverlay: []string{"stream_writers"}},
		{name: "shared sets both", shared: sharedMap + sharedWriters},
		{name: "shared instance_map disagrees",
			shared: strings.Replace(sharedMap, "9097", "9999", 1) + "  extra: {host: 10.0.0.1, port: 1}\n",
			wantErr: []string{"instance_map.worker1: the shared config says 127.0.0.1:9999, the deployment gives 127.0.0.1:9097",
				"instance_map.extra: in the shared config but not an instance"}},
		{name: "shared stream_writers disagree", shared: strings.Replace(sharedWriters, "[persister2, persister1]", "[persister1, persister2]", 1),
			wantErr: []string{"stream_writers.events: the shared config says [persister1, persister2], the deployment says [persister2, persister1]"}},
		{name: "shared stream_writers miss one", shared: "stream_writers: {events: [persister2, persister1]}\n",
			wantErr: []string{"stream_writers.typing: the shared config says [main], the deployment says [writer1]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeDeployment(t, deployment, tt.shared)
			out := filepath.Join(filepath.Dir(path), "gen")
			_, plan, err := fleet.Prepare(path, out)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q:\n%v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			overlay := string(plan.Files[0].Data)
			for _, key := range []string{"instance_map", "stream_writers"} {
				if got, want := strings.Contains(overlay, key+":"), slices.Contains(tt.wantOverlay, key); got != want {
					t.Errorf("overlay sets %s: %v, want %v:\n%s", key, got, want, overlay)
				}
			}
			if err := fleet.WriteFiles(plan); err != nil {
				t.Fatal(err)
			}
			// The generated set is what `ganglion serve` loads: it must
			// load, validate, and give each process its identity.
			cfgs, err := fleet.LoadConfigs(plan, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range plan.Instances {
				cfg := cfgs[in.Name]
				if cfg.InstanceName() != in.Name {
					t.Errorf("%s: instance name %q", in.Name, cfg.InstanceName())
				}
				if cfg.WorkerRole() != in.Role {
					t.Errorf("%s: role %q, want %q", in.Name, cfg.WorkerRole(), in.Role)
				}
				for name, loc := range wantMap {
					if got := cfg.InstanceMap[name]; got != loc {
						t.Errorf("%s: instance_map.%s = %+v, want %+v", in.Name, name, got, loc)
					}
				}
				if len(cfg.InstanceMap) != len(wantMap) {
					t.Errorf("%s: instance_map has %d entries, want %d", in.Name, len(cfg.InstanceMap), len(wantMap))
				}
				for s, w := range wantWriters {
					if got := cfg.StreamWriters(s); !slices.Equal(got, w) {
						t.Errorf("%s: stream_writers.%s = %v, want %v", in.Name, s, got, w)
					}
				}
			}
			worker := cfgs["worker1"].Listeners()
			if len(worker) != 2 || worker[0].Port != 8081 || !worker[0].XForwarded || !worker[0].HasResource("client") ||
				!slices.Equal(worker[1].BindAddresses, []string{"0.0.0.0"}) || !worker[1].HasResource("replication") {
				t.Errorf("worker1 listeners %+v", worker)
			}
			if ls := cfgs["main"].Listeners(); len(ls) != 2 || ls[0].Port != 8008 || ls[1].Port != 9093 {
				t.Errorf("main listeners %+v", ls)
			}
			if ls := cfgs["media1"].Listeners(); len(ls) != 0 {
				t.Errorf("media1 listeners %+v", ls)
			}
		})
	}
}

func TestGeneratePlan(t *testing.T) {
	path := writeDeployment(t, validDeployment, "")
	d, plan, err := fleet.Prepare(path, "")
	if err != nil {
		t.Fatal(err)
	}
	if plan.Dir != d.RunDirPath() {
		t.Errorf("dir %q, want run_dir %q", plan.Dir, d.RunDirPath())
	}
	var names []string
	for _, f := range plan.Files {
		names = append(names, f.Name)
	}
	if want := []string{"fleet.yaml", "main.yaml", "persister1.yaml", "writer1.yaml", "worker1.yaml"}; !slices.Equal(names, want) {
		t.Errorf("files %q, want %q", names, want)
	}
	w := plan.Instances[3]
	wantArgs := []string{"serve", "-c", filepath.Join(d.Dir, "homeserver.yaml"), "-c", filepath.Join(plan.Dir, "fleet.yaml"),
		"-c", filepath.Join(plan.Dir, "worker1.yaml")}
	if !slices.Equal(w.ServeArgs(), wantArgs) {
		t.Errorf("args %q, want %q", w.ServeArgs(), wantArgs)
	}
	if w.HealthURL != "http://127.0.0.1:8081/health" {
		t.Errorf("health %q", w.HealthURL)
	}
	if w.Replication == nil || w.Replication.Host != "127.0.0.1" || w.Replication.Port != 9097 {
		t.Errorf("replication %+v (a wildcard bind is reached on loopback)", w.Replication)
	}
	if !bytes.HasPrefix(plan.Files[3].Data, []byte("# Generated by `ganglion up` from deployment.yaml")) {
		t.Errorf("no header:\n%s", plan.Files[3].Data)
	}
}

// TestExampleFleet checks that the committed examples/fleet/workers files
// are what --generate-only produces from examples/fleet/deployment.yaml
// (run with -update to regenerate them) and that every process's set loads.
func TestExampleFleet(t *testing.T) {
	dir := filepath.Join("..", "..", "examples", "fleet")
	_, plan, err := fleet.Prepare(filepath.Join(dir, "deployment.yaml"), filepath.Join(dir, "workers"))
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := fleet.WriteFiles(plan); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range plan.Files {
		got, err := os.ReadFile(filepath.Join(plan.Dir, f.Name))
		if err != nil {
			t.Fatalf("%v (run go test ./internal/fleet -run TestExampleFleet -update)", err)
		}
		if !bytes.Equal(got, f.Data) {
			t.Errorf("examples/fleet/workers/%s is stale; run go test ./internal/fleet -run TestExampleFleet -update\n got:\n%s\nwant:\n%s",
				f.Name, got, f.Data)
		}
	}
	cfgs, err := fleet.LoadConfigs(plan, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := cfgs["worker1"].Listeners(); len(l) == 0 || l[0].Port != 8081 || !l[0].HasResource("client") {
		t.Errorf("worker1 should serve clients on 8081: %+v", l)
	}
	// Clients reach the router on 8008; it knows every client listener
	// and sends client traffic to the two client-facing workers.
	if cfgs["router"].WorkerRole() != config.RoleRouter {
		t.Errorf("router role %q", cfgs["router"].WorkerRole())
	}
	var files []string
	for _, in := range plan.Instances {
		if in.Name == "router" {
			files = in.ConfigFiles
		}
	}
	_, rc, err := router.Load(files, func(string) string { return "" })
	if err != nil {
		t.Fatalf("router config: %v", err)
	}
	if rc.Listen.Port != 8008 || rc.MetricsListen == nil || rc.MetricsListen.Port != 9108 {
		t.Errorf("router listens on %+v, metrics %+v", rc.Listen, rc.MetricsListen)
	}
	if got := rc.Instances["worker2"].ClientURL; got != "http://127.0.0.1:8082" {
		t.Errorf("router's worker2 URL %q", got)
	}
	if _, ok := rc.Instances["persister1"]; ok {
		t.Errorf("persister1 has no HTTP listener for clients, yet the router lists it")
	}
	for _, pool := range []string{"sync", "client", "events"} {
		if got := []string(rc.Pools[pool]); !slices.Equal(got, []string{"worker1", "worker2"}) {
			t.Errorf("router pool %s = %v", pool, got)
		}
	}
	if got := cfgs["main"].StreamWriters(config.StreamEvents); !slices.Equal(got, []string{"persister1", "persister2"}) {
		t.Errorf("events writers %v", got)
	}
	// pusher1 sends every user's push notifications; main sends none.
	if cfgs["pusher1"].WorkerRole() != config.RolePusher {
		t.Errorf("pusher1 role %q", cfgs["pusher1"].WorkerRole())
	}
	for _, name := range []string{"main", "pusher1", "worker1"} {
		if got := cfgs[name].Pushers(); !slices.Equal(got, []string{"pusher1"}) {
			t.Errorf("%s sees pusher instances %v, want [pusher1]", name, got)
		}
	}
	if _, ok := rc.Instances["pusher1"]; ok {
		t.Errorf("pusher1 has no client listener, yet the router lists it")
	}
}

// Behind a router every client listener believes X-Forwarded-For, from the
// router only: loopback by default, plus the listener's own address when
// it is bound elsewhere (the router, on this host, connects from there).
// Without a router nothing changes.
func TestGenerateForwardedBehindRouter(t *testing.T) {
	const base = `
config: [homeserver.yaml]
instances:
  - name: main
    listeners: [{port: 8008, resources: [client]}, {port: 9093, resources: [replication, metrics]}]
  - name: worker1
    app: generic_worker
    listeners: [{port: 8081, bind_address: 10.0.0.5, resources: [client]}, {port: 9097, resources: [replication]}]
`
	const withRouter = base + `  - name: router
    app: router
    listeners: [{port: 8000, resources: [client]}]
`
	load := func(t *testing.T, deployment string) map[string]*config.Config {
		t.Helper()
		path := writeDeployment(t, deployment, "")
		_, plan, err := fleet.Prepare(path, filepath.Join(filepath.Dir(path), "gen"))
		if err != nil {
			t.Fatal(err)
		}
		if err := fleet.WriteFiles(plan); err != nil {
			t.Fatal(err)
		}
		cfgs, err := fleet.LoadConfigs(plan, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfgs
	}
	cfgs := load(t, withRouter)
	if l := cfgs["main"].Listeners(); !l[0].XForwarded || l[0].XForwardedTrustedProxies != nil || l[1].XForwarded {
		t.Errorf("main listeners %+v: want x_forwarded (default trust) on the client listener only", l)
	}
	if l := cfgs["worker1"].Listeners(); !l[0].XForwarded ||
		!slices.Equal(l[0].XForwardedTrustedProxies, []string{"127.0.0.1", "::1", "10.0.0.5"}) || l[1].XForwarded {
		t.Errorf("worker1 listeners %+v: want x_forwarded trusting loopback and 10.0.0.5 on the client listener", l)
	}
	cfgs = load(t, base)
	for _, name := range []string{"main", "worker1"} {
		for _, l := range cfgs[name].Listeners() {
			if l.XForwarded {
				t.Errorf("%s: listener %d has x_forwarded without a router", name, l.Port)
			}
		}
	}
}

// Pusher workers become pusher_instances in the overlay (so that two of
// them share the users), unless the shared config chose the pushers itself.
func TestGeneratePushers(t *testing.T) {
	const deployment = `
config: [homeserver.yaml]
instances:
  - name: main
    listeners: [{port: 8008, resources: [client]}, {port: 9093, resources: [replication]}]
  - name: pusher1
    app: synapse.app.pusher
    listeners: [{port: 9094, resources: [replication]}]
  - name: pusher2
    app: pusher
`
	d, err := fleet.Parse([]byte(deployment), "/srv/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		shared fleet.Shared
		want   string
	}{
		{fleet.Shared{}, "pusher_instances:\n  - pusher1\n  - pusher2\n"},
		{fleet.Shared{Pushers: true}, ""},
	} {
		plan, err := fleet.Generate(d, tc.shared, "/run")
		if err != nil {
			t.Fatal(err)
		}
		overlay := string(plan.Files[0].Data)
		if tc.want == "" && strings.Contains(overlay, "pusher_instances") {
			t.Errorf("shared config sets the pushers, yet the overlay does too:\n%s", overlay)
		}
		if tc.want != "" && !strings.Contains(overlay, tc.want) {
			t.Errorf("overlay lacks %q:\n%s", tc.want, overlay)
		}
	}
	dir := t.TempDir()
	for name, body := range map[string]string{"a.yaml": "start_pushers: false\n", "b.yaml": "server_name: x\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := fleet.ReadShared([]string{filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")})
	if err != nil || !s.Pushers {
		t.Errorf("start_pushers in a shared file: Pushers=%v, err %v", s.Pushers, err)
	}
}

// Federation sender workers become federation_sender_instances likewise.
func TestGenerateFederationSenders(t *testing.T) {
	const deployment = `
config: [homeserver.yaml]
instances:
  - name: main
    listeners: [{port: 8008, resources: [client]}, {port: 9093, resources: [replication]}]
  - name: fed1
    app: federation_sender
    listeners: [{port: 9094, resources: [replication]}]
  - name: fed2
    app: synapse.app.federation_sender
`
	d, err := fleet.Parse([]byte(deployment), "/srv/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		shared fleet.Shared
		want   string
	}{
		{fleet.Shared{}, "federation_sender_instances:\n  - fed1\n  - fed2\n"},
		{fleet.Shared{FederationSenders: true}, ""},
	} {
		plan, err := fleet.Generate(d, tc.shared, "/run")
		if err != nil {
			t.Fatal(err)
		}
		overlay := string(plan.Files[0].Data)
		if tc.want == "" && strings.Contains(overlay, "federation_sender_instances") {
			t.Errorf("shared config sets the senders, yet the overlay does too:\n%s", overlay)
		}
		if tc.want != "" && !strings.Contains(overlay, tc.want) {
			t.Errorf("overlay lacks %q:\n%s", tc.want, overlay)
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("send_federation: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := fleet.ReadShared([]string{filepath.Join(dir, "a.yaml")})
	if err != nil || !s.FederationSenders {
		t.Errorf("send_federation in a shared file: FederationSenders=%v, err %v", s.FederationSenders, err)
	}
}
