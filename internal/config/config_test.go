package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"ganglion/internal/config"
)

// writeFiles writes each name → content pair into a fresh directory and
// returns the paths in the order given.
func writeFiles(tb testing.TB, files ...[2]string) []string {
	tb.Helper()
	dir := tb.TempDir()
	paths := make([]string, 0, len(files))
	for _, f := range files {
		p := filepath.Join(dir, f[0])
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f[1]), 0o600); err != nil {
			tb.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// envMap turns a map into an env lookup function.
func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// mustLoad loads files and fails the test on error.
func mustLoad(tb testing.TB, env map[string]string, files ...[2]string) *config.Config {
	tb.Helper()
	cfg, err := config.Load(writeFiles(tb, files...), envMap(env))
	if err != nil {
		tb.Fatalf("Load: %v", err)
	}
	return cfg
}

// problemPaths returns the sorted, de-duplicated key paths in err, which
// must be a *ValidationError.
func problemPaths(tb testing.TB, err error) []string {
	tb.Helper()
	var ve *config.ValidationError
	if !errors.As(err, &ve) {
		tb.Fatalf("error %v (%T) is not a *ValidationError", err, err)
	}
	var paths []string
	for _, p := range ve.Problems {
		if !slices.Contains(paths, p.Path) {
			paths = append(paths, p.Path)
		}
	}
	sort.Strings(paths)
	return paths
}

const minimalMain = `
server_name: example.org
listeners:
  - port: 8008
    bind_addresses: ['127.0.0.1']
    type: http
    resources: [{names: [client, federation]}]
`

// sharedFleet is a shared config for a main process plus workers.
const sharedFleet = `
server_name: example.org
database:
  name: psycopg2
  args: {user: synapse, password: pw, database: synapse, host: db.internal, port: 5432}
redis: {enabled: true}
worker_replication_secret: s3cret
listeners:
  - port: 9093
    bind_address: '10.0.0.1'
    type: http
    resources: [{names: [replication]}]
instance_map:
  main: {host: 10.0.0.1, port: 9093}
  persister1: {host: 10.0.0.2, port: 9093}
  persister2: {host: 10.0.0.3, port: 9093}
stream_writers:
  events: [persister1, persister2]
  typing: persister1
`

func TestNormalizeWorkerApp(t *testing.T) {
	tests := []struct {
		app    string
		want   string
		wantOK bool
	}{
		{"", config.RoleMain, true},
		{"synapse.app.homeserver", config.RoleMain, true},
		{"ganglion.app.homeserver", config.RoleMain, true},
		{"homeserver", config.RoleMain, true},
		{"synapse.app.generic_worker", config.RoleGenericWorker, true},
		{"ganglion.app.generic_worker", config.RoleGenericWorker, true},
		{"generic_worker", config.RoleGenericWorker, true},
		{"synapse.app.client_reader", config.RoleGenericWorker, true},
		{"synapse.app.event_creator", config.RoleGenericWorker, true},
		{"synapse.app.federation_reader", config.RoleGenericWorker, true},
		{"synapse.app.frontend_proxy", config.RoleGenericWorker, true},
		{"synchrotron", config.RoleGenericWorker, true},
		{"synapse.app.media_repository", config.RoleMediaRepository, true},
		{"synapse.app.pusher", config.RolePusher, true},
		{"synapse.app.federation_sender", config.RoleFederationSender, true},
		{"synapse.app.appservice", config.RoleAppservice, true},
		{"ganglion.app.user_dir", config.RoleUserDir, true},
		{"router", config.RoleRouter, true},
		{"ganglion.app.router", config.RoleRouter, true},
		{"  synapse.app.generic_worker  ", config.RoleGenericWorker, true},
		{"synapse.app.nonsense", "nonsense", false},
		{"other.app.generic_worker", "other.app.generic_worker", false},
	}
	for _, tt := range tests {
		t.Run(tt.app, func(t *testing.T) {
			got, ok := config.NormalizeWorkerApp(tt.app)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("NormalizeWorkerApp(%q) = %q, %v; want %q, %v", tt.app, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestInstanceHelpers(t *testing.T) {
	tests := []struct {
		name          string
		worker        string
		wantInstance  string
		wantRole      string
		wantMain      bool
		wantListeners []int
	}{
		{
			name:          "main",
			worker:        "",
			wantInstance:  "main",
			wantRole:      config.RoleMain,
			wantMain:      true,
			wantListeners: []int{9093},
		},
		{
			name:          "main spelt as synapse app",
			worker:        "worker_app: synapse.app.homeserver\n",
			wantInstance:  "main",
			wantRole:      config.RoleMain,
			wantMain:      true,
			wantListeners: []int{9093},
		},
		{
			name: "generic worker",
			worker: `
worker_app: synapse.app.generic_worker
worker_name: persister1
worker_listeners:
  - {type: http, port: 8034, bind_addresses: ['10.0.0.2'], resources: [{names: [replication]}]}
  - {type: http, port: 8035, resources: [{names: [client]}]}
`,
			wantInstance:  "persister1",
			wantRole:      config.RoleGenericWorker,
			wantListeners: []int{8034, 8035},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustLoad(t, nil, [2]string{"shared.yaml", sharedFleet}, [2]string{"worker.yaml", tt.worker})
			if got := cfg.InstanceName(); got != tt.wantInstance {
				t.Errorf("InstanceName = %q, want %q", got, tt.wantInstance)
			}
			if got := cfg.WorkerRole(); got != tt.wantRole {
				t.Errorf("WorkerRole = %q, want %q", got, tt.wantRole)
			}
			if got := cfg.IsMain(); got != tt.wantMain {
				t.Errorf("IsMain = %v, want %v", got, tt.wantMain)
			}
			var ports []int
			for _, l := range cfg.Listeners() {
				ports = append(ports, l.Port)
			}
			if !slices.Equal(ports, tt.wantListeners) {
				t.Errorf("Listeners ports = %v, want %v", ports, tt.wantListeners)
			}
		})
	}
}

func TestStreamWriters(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"shared.yaml", sharedFleet})
	tests := []struct {
		stream string
		want   []string
	}{
		{config.StreamEvents, []string{"persister1", "persister2"}},
		{config.StreamTyping, []string{"persister1"}}, // single string accepted
		{config.StreamToDevice, []string{"main"}},     // unset → main
		{config.StreamDeviceLists, []string{"main"}},
		{"no_such_stream", []string{"main"}},
	}
	for _, tt := range tests {
		t.Run(tt.stream, func(t *testing.T) {
			if got := cfg.StreamWriters(tt.stream); !slices.Equal(got, tt.want) {
				t.Errorf("StreamWriters(%q) = %v, want %v", tt.stream, got, tt.want)
			}
		})
	}
}

func TestDuties(t *testing.T) {
	f := func(b bool) *bool { return &b }
	tests := []struct {
		name string
		edit func(c *config.Config)
		// Expectations for this instance.
		wantFedSenders []string
		wantPushers    []string
		wantBackground bool
		wantAppservice bool
		wantUserDir    bool
		wantMediaJobs  bool
	}{
		{
			name:           "main with defaults does everything",
			edit:           func(c *config.Config) {},
			wantFedSenders: []string{"main"}, wantPushers: []string{"main"},
			wantBackground: true, wantAppservice: true, wantUserDir: true, wantMediaJobs: true,
		},
		{
			name: "main with duties moved to workers",
			edit: func(c *config.Config) {
				c.FederationSenderInstances = config.StringList{"fs1", "fs2"}
				c.PusherInstances = config.StringList{}
				c.RunBackgroundTasksOn = "bg"
				c.NotifyAppservicesFromWorker = "as"
				c.UpdateUserDirectoryFromWorker = "ud"
				c.MediaInstanceRunningBackgroundJobs = "media1"
			},
			wantFedSenders: []string{"fs1", "fs2"}, wantPushers: []string{},
		},
		{
			name: "legacy federation_sender app with send_federation false",
			edit: func(c *config.Config) {
				c.WorkerApp, c.WorkerName = "synapse.app.federation_sender", "fs1"
				c.SendFederation = f(false)
			},
			wantFedSenders: []string{"fs1"}, wantPushers: []string{"main"}, wantMediaJobs: true,
		},
		{
			name: "legacy user_dir app with update_user_directory false",
			edit: func(c *config.Config) {
				c.WorkerApp, c.WorkerName = "synapse.app.user_dir", "ud1"
				c.UpdateUserDirectory = f(false)
				c.EnableMediaRepo = f(false)
			},
			wantFedSenders: []string{"main"}, wantPushers: []string{"main"}, wantUserDir: true,
		},
		{
			name: "designated background worker, written as master elsewhere",
			edit: func(c *config.Config) {
				c.WorkerApp, c.WorkerName = "generic_worker", "bg"
				c.RunBackgroundTasksOn = "bg"
				c.NotifyAppservicesFromWorker = "master"
			},
			wantFedSenders: []string{"main"}, wantPushers: []string{"main"},
			wantBackground: true, wantMediaJobs: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			c.ServerName = "example.org"
			tt.edit(c)
			c.ApplyDefaults()
			if got := c.FederationSenders(); !slices.Equal(got, tt.wantFedSenders) {
				t.Errorf("FederationSenders = %v, want %v", got, tt.wantFedSenders)
			}
			if got := c.Pushers(); !slices.Equal(got, tt.wantPushers) {
				t.Errorf("Pushers = %v, want %v", got, tt.wantPushers)
			}
			if got := c.RunsBackgroundTasks(); got != tt.wantBackground {
				t.Errorf("RunsBackgroundTasks = %v, want %v", got, tt.wantBackground)
			}
			if got := c.NotifiesAppservices(); got != tt.wantAppservice {
				t.Errorf("NotifiesAppservices = %v, want %v", got, tt.wantAppservice)
			}
			if got := c.UpdatesUserDirectory(); got != tt.wantUserDir {
				t.Errorf("UpdatesUserDirectory = %v, want %v", got, tt.wantUserDir)
			}
			if got := c.RunsMediaBackgroundJobs(); got != tt.wantMediaJobs {
				t.Errorf("RunsMediaBackgroundJobs = %v, want %v", got, tt.wantMediaJobs)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"1024", 1024, false},
		{"50M", 50 << 20, false},
		{"50m", 50 << 20, false},
		{"10K", 10 << 10, false},
		{"2G", 2 << 30, false},
		{"1T", 1 << 40, false},
		{" 7 ", 7, false},
		{"", 0, true},
		{"M", 0, true},
		{"50X", 0, true},
		{"1.5M", 0, true},
		{"-1", 0, true},
		{"99999999999T", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := config.ParseSize(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d, err=%v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestValidationErrorFormat(t *testing.T) {
	err := &config.ValidationError{Problems: []config.Problem{
		{Path: "server_name", Message: "required"},
		{Path: "stream_writers.typing", Message: "only one writer allowed, got 2"},
	}}
	want := "server_name: required\nstream_writers.typing: only one writer allowed, got 2"
	if got := err.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if strings.Count(err.Error(), "\n") != len(err.Problems)-1 {
		t.Errorf("want one problem per line")
	}
}
