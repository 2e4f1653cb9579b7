package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ganglion/internal/config"
)

func TestLoadMergeSharedAndWorker(t *testing.T) {
	shared := strings.Replace(sharedFleet, "port: 5432}", "port: 5432, cp_max: 20}", 1) + `
rc_message: {per_second: 1, burst_count: 20}
trusted_key_servers: [{server_name: matrix.org}]
max_upload_size: 10M
enable_metrics: false
`
	worker := `
worker_app: synapse.app.generic_worker
worker_name: persister1
worker_listeners:
  - type: http
    port: 8034
    bind_addresses: ['10.0.0.2']
    resources: [{names: [replication]}]
# Mapping merges key by key: burst_count from the shared file survives.
rc_message: {per_second: 5}
# Nested mappings merge too; user stays from the shared file.
database:
  args: {host: db-replica.internal}
# Lists replace, they do not append.
stream_writers:
  events: [persister1]
# null removes the key, restoring the default.
max_upload_size: null
`
	cfg := mustLoad(t, nil, [2]string{"shared.yaml", shared}, [2]string{"worker.yaml", worker})

	tests := []struct {
		name      string
		got, want any
	}{
		{"rc_message.per_second from worker", cfg.RCMessage.PerSecond, 5.0},
		{"rc_message.burst_count from shared", cfg.RCMessage.BurstCount, 20.0},
		{"database.args.host from worker", cfg.Database.Args.Host, "db-replica.internal"},
		{"database.args.user from shared", cfg.Database.Args.User, "synapse"},
		{"database.args.cp_max from shared", cfg.Database.Args.CPMax, 20},
		{"database.args.cp_min default", cfg.Database.Args.CPMin, 5},
		{"stream_writers.events replaced", strings.Join(cfg.StreamWriters(config.StreamEvents), ","), "persister1"},
		{"stream_writers.typing kept", strings.Join(cfg.StreamWriters(config.StreamTyping), ","), "persister1"},
		{"max_upload_size back to default", cfg.MaxUploadBytes(), int64(50 << 20)},
		{"enable_metrics: false from shared", cfg.MetricsEnabled(), false},
		{"trusted_key_servers raw", cfg.TrustedKeyServers[0]["server_name"], "matrix.org"},
		{"instance", cfg.InstanceName(), "persister1"},
		{"rc_registration default", cfg.RCRegistration, config.RateLimit{PerSecond: 0.17, BurstCount: 3}},
		{"rc_login.failed_attempts default", cfg.RCLogin.FailedAttempts, config.RateLimit{PerSecond: 0.17, BurstCount: 3}},
		{"legacy bind_address folded", strings.Join(cfg.MainListeners[0].BindAddresses, ","), "10.0.0.1"},
		{"presence default", cfg.Presence.Enabled, true},
		{"default_room_version", cfg.DefaultRoomVersion, "10"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %#v, want %#v", tt.name, tt.got, tt.want)
		}
	}
}

func TestLoadDefaults(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain})
	dir := cfg.ConfigDir
	tests := []struct {
		name      string
		got, want any
	}{
		{"database.name", cfg.Database.Name, config.DatabaseSQLite},
		{"sqlite path next to config", cfg.Database.Args.Database, filepath.Join(dir, "homeserver.db")},
		{"engine", cfg.Database.Engine(), config.EngineSQLite},
		{"DSN is the path", cfg.Database.DSN(), filepath.Join(dir, "homeserver.db")},
		{"media_store_path", cfg.MediaStorePath, filepath.Join(dir, "media_store")},
		{"max upload", cfg.MaxUploadBytes(), int64(50 << 20)},
		{"rc_message", cfg.RCMessage, config.RateLimit{PerSecond: 0.2, BurstCount: 10}},
		{"rc_login.address", cfg.RCLogin.Address, config.RateLimit{PerSecond: 0.003, BurstCount: 5}},
		{"redis off", cfg.Redis.Enabled, false},
		{"bcrypt_rounds", cfg.BcryptRounds, 12},
		{"logging", cfg.Logging, config.LogSettings{Level: "info", Format: "text"}},
		{"unknown keys", len(cfg.UnknownKeys), 0},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %#v, want %#v", tt.name, tt.got, tt.want)
		}
	}
}

func TestLoadDefaultBindAddresses(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", `
server_name: example.org
listeners: [{port: 8008, type: http, resources: [{names: [client]}]}]
`})
	if got := cfg.MainListeners[0].Addresses(); !slices.Equal(got, []string{"[::]:8008", "0.0.0.0:8008"}) {
		t.Errorf("Addresses = %v", got)
	}
}

func TestLoadExplicitZeroRateLimitKept(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + "rc_message: {per_second: 0}\n"})
	if cfg.RCMessage != (config.RateLimit{PerSecond: 0, BurstCount: 10}) {
		t.Errorf("rc_message = %+v, want per_second 0 kept and burst default", cfg.RCMessage)
	}
}

func TestLoadLegacyKeys(t *testing.T) {
	shared := `
server_name: example.org
database: {name: psycopg2, args: {database: synapse}}
redis: {enabled: true}
instance_map:
  persister1: {host: 10.0.0.2, port: 9093}
stream_writers:
  events: [master, persister1]
  typing: master
run_background_tasks_on: master
`
	tests := []struct {
		name     string
		worker   string
		wantMain config.InstanceLocation
	}{
		{
			name: "worker_replication_host and port map to instance_map.main",
			worker: `
worker_app: synapse.app.generic_worker
worker_name: w1
worker_replication_host: 10.0.0.1
worker_replication_http_port: 9093
worker_replication_http_tls: true
`,
			wantMain: config.InstanceLocation{Host: "10.0.0.1", Port: 9093, TLS: true},
		},
		{
			name: "instance_map.master is an alias of main",
			worker: `
worker_app: generic_worker
worker_name: w1
instance_map:
  master: {host: 10.0.0.9, port: 9093}
`,
			wantMain: config.InstanceLocation{Host: "10.0.0.9", Port: 9093},
		},
		{
			name: "instance_map.main wins over the legacy keys",
			worker: `
worker_app: generic_worker
worker_name: w1
worker_replication_host: 10.0.0.1
worker_replication_http_port: 9093
instance_map:
  main: {path: /run/ganglion/main.sock}
`,
			wantMain: config.InstanceLocation{Path: "/run/ganglion/main.sock"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustLoad(t, nil, [2]string{"shared.yaml", shared}, [2]string{"worker.yaml", tt.worker})
			if got := cfg.InstanceMap["main"]; got != tt.wantMain {
				t.Errorf("instance_map.main = %+v, want %+v", got, tt.wantMain)
			}
			if _, ok := cfg.InstanceMap["master"]; ok {
				t.Errorf("instance_map.master should have been renamed")
			}
			if got := cfg.StreamWriters(config.StreamEvents); !slices.Equal(got, []string{"main", "persister1"}) {
				t.Errorf("events writers = %v, want master renamed to main", got)
			}
			if cfg.RunBackgroundTasksOn != "main" {
				t.Errorf("run_background_tasks_on = %q, want main", cfg.RunBackgroundTasksOn)
			}
		})
	}
}

func TestLoadEnvOverrides(t *testing.T) {
	base := minimalMain + `
database:
  name: psycopg2
  args: {database: fromfile, user: u, host: filehost, cp_min: 2, cp_max: 7}
redis: {enabled: false, host: filehost, password_path: redis.pw}
`
	tests := []struct {
		name      string
		env       map[string]string
		check     func(t *testing.T, c *config.Config)
		wantPaths []string // problem paths if Load should fail
	}{
		{
			name: "postgres URL",
			env:  map[string]string{"GANGLION_DATABASE_URL": "postgres://alice:p%40ss@pg.example:6543/hs?sslmode=require&application_name=ganglion"},
			check: func(t *testing.T, c *config.Config) {
				a := c.Database.Args
				if c.Database.Name != "psycopg2" || a.User != "alice" || a.Password != "p@ss" || a.Host != "pg.example" ||
					a.Port != 6543 || a.Database != "hs" || a.SSLMode != "require" || a.Extra["application_name"] != "ganglion" {
					t.Errorf("database = %+v", c.Database)
				}
				if a.CPMin != 2 || a.CPMax != 7 {
					t.Errorf("pool sizes from the file should survive: %d/%d", a.CPMin, a.CPMax)
				}
				want := "postgres://alice:p%40ss@pg.example:6543/hs?application_name=ganglion&sslmode=require"
				if got := c.Database.DSN(); got != want {
					t.Errorf("DSN = %q, want %q", got, want)
				}
			},
		},
		{
			name: "sqlite URL",
			env:  map[string]string{"GANGLION_DATABASE_URL": "sqlite:///var/lib/ganglion/hs.db"},
			check: func(t *testing.T, c *config.Config) {
				if c.Database.Name != "sqlite3" || c.Database.Args.Database != "/var/lib/ganglion/hs.db" {
					t.Errorf("database = %+v", c.Database)
				}
				if got := c.Redis.EffectivePassword(); got != "filepw" {
					t.Errorf("redis password from password_path = %q, want filepw", got)
				}
			},
		},
		{
			name: "plain .db path stays relative to the working directory",
			env:  map[string]string{"GANGLION_DATABASE_URL": "data/hs.db"},
			check: func(t *testing.T, c *config.Config) {
				if c.Database.Name != "sqlite3" || c.Database.Args.Database != "data/hs.db" {
					t.Errorf("database = %+v", c.Database)
				}
			},
		},
		{
			name: "redis URL with password and db",
			env:  map[string]string{"GANGLION_REDIS_URL": "redis://:hunter2@redis.example:6380/3"},
			check: func(t *testing.T, c *config.Config) {
				r := c.Redis
				if !r.Enabled || r.Host != "redis.example" || r.Port != 6380 || r.DBID != 3 ||
					r.Password != "hunter2" || r.PasswordPath != "" || r.UseTLS {
					t.Errorf("redis = %+v", r)
				}
				if r.EffectivePassword() != "hunter2" {
					t.Errorf("EffectivePassword = %q", r.EffectivePassword())
				}
			},
		},
		{
			name: "rediss URL without port",
			env:  map[string]string{"GANGLION_REDIS_URL": "rediss://redis.example"},
			check: func(t *testing.T, c *config.Config) {
				r := c.Redis
				if !r.Enabled || !r.UseTLS || r.Port != 6379 || r.DBID != 0 || r.Host != "redis.example" {
					t.Errorf("redis = %+v", r)
				}
			},
		},
		{
			name: "bad values are problems, without echoing secrets",
			env: map[string]string{
				"GANGLION_DATABASE_URL": "mysql://root:topsecret@h/db",
				"GANGLION_REDIS_URL":    "redis://:topsecret@h:notaport",
			},
			wantPaths: []string{"GANGLION_DATABASE_URL", "GANGLION_REDIS_URL"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			paths := writeFiles(t, [2]string{"homeserver.yaml", base}, [2]string{"redis.pw", "filepw\n"})
			cfg, err := config.Load(paths[:1], envMap(tt.env))
			if tt.wantPaths != nil {
				if got := problemPaths(t, err); !slices.Equal(got, tt.wantPaths) {
					t.Errorf("problem paths = %v, want %v\n%v", got, tt.wantPaths, err)
				}
				if strings.Contains(err.Error(), "topsecret") {
					t.Errorf("error leaks a password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.check(t, cfg)
		})
	}
}

func TestLoadRelativePathsAgainstFirstFile(t *testing.T) {
	dir := t.TempDir()
	shared := filepath.Join(dir, "conf", "shared.yaml")
	worker := filepath.Join(dir, "conf", "workers", "w1.yaml")
	for _, p := range []string{shared, worker} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(shared, minimalMain+`
signing_key_path: keys/example.org.signing.key
media_store_path: media
log_config: log.yaml
database: {name: sqlite3, args: {database: data/hs.db}}
registration_shared_secret_path: reg.secret
`)
	// Set in the second file but still resolved against the first file's
	// directory.
	writeFile(worker, "pid_file: run/hs.pid\n")
	writeFile(filepath.Join(dir, "conf", "log.yaml"), "level: debug\nformat: json\n")
	writeFile(filepath.Join(dir, "conf", "reg.secret"), "  shh\n")

	cfg, err := config.Load([]string{shared, worker}, nil)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "conf")
	tests := []struct {
		name      string
		got, want any
	}{
		{"signing_key_path", cfg.SigningKeyPath, filepath.Join(conf, "keys", "example.org.signing.key")},
		{"media_store_path", cfg.MediaStorePath, filepath.Join(conf, "media")},
		{"log_config", cfg.LogConfig, filepath.Join(conf, "log.yaml")},
		{"database", cfg.Database.Args.Database, filepath.Join(conf, "data", "hs.db")},
		{"pid_file from second file", cfg.PIDFile, filepath.Join(conf, "run", "hs.pid")},
		{"log settings read", cfg.Logging, config.LogSettings{Level: "debug", Format: "json"}},
		{"registration secret trimmed", cfg.RegistrationSecret(), "shh"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %#v, want %#v", tt.name, tt.got, tt.want)
		}
	}
}

func TestLoadUnknownKeys(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + `
email: {smtp_host: localhost}
oidc_providers: []
worker_daemonize: false
presence: {enabled: untracked, include_offline_users_on_sync: true}
`})
	want := []string{"oidc_providers", "worker_daemonize"}
	if !slices.Equal(cfg.UnknownKeys, want) {
		t.Errorf("UnknownKeys = %v, want %v", cfg.UnknownKeys, want)
	}
	if !cfg.Presence.Enabled || !cfg.Presence.Untracked {
		t.Errorf("presence = %+v, want enabled+untracked", cfg.Presence)
	}
}

func TestLoadLogConfig(t *testing.T) {
	python := `
version: 1
formatters:
  precise: {format: '%(asctime)s - %(name)s - %(message)s'}
handlers:
  console: {class: logging.StreamHandler, formatter: precise}
root:
  level: WARNING
  handlers: [console]
`
	tests := []struct {
		name      string
		log       string
		want      config.LogSettings
		wantPaths []string
	}{
		{"ganglion form", "level: error\nformat: JSON\n", config.LogSettings{Level: "error", Format: "json"}, nil},
		{"python dictConfig", python, config.LogSettings{Level: "warn", Format: "text", FromPython: true}, nil},
		{"bad level", "level: loud\n", config.LogSettings{}, []string{"log_config"}},
		{"bad format", "format: xml\n", config.LogSettings{}, []string{"log_config"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			paths := writeFiles(t, [2]string{"homeserver.yaml", minimalMain + "log_config: log.yaml\n"},
				[2]string{"log.yaml", tt.log})
			cfg, err := config.Load(paths[:1], nil)
			if tt.wantPaths != nil {
				if got := problemPaths(t, err); !slices.Equal(got, tt.wantPaths) {
					t.Errorf("problem paths = %v, want %v", got, tt.wantPaths)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Logging != tt.want {
				t.Errorf("Logging = %+v, want %+v", cfg.Logging, tt.want)
			}
		})
	}
}

func TestLoadWorkerUsesWorkerLogConfig(t *testing.T) {
	// The shared file's log_config belongs to main; a worker without
	// worker_log_config gets the defaults, not main's file.
	paths := writeFiles(t,
		[2]string{"shared.yaml", sharedFleet + "log_config: main-log.yaml\n"},
		[2]string{"w.yaml", "worker_app: generic_worker\nworker_name: persister1\n"},
		[2]string{"main-log.yaml", "level: debug\n"},
	)
	cfg, err := config.Load(paths[:2], nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logging != config.DefaultLogSettings() {
		t.Errorf("worker Logging = %+v, want defaults", cfg.Logging)
	}
}

func TestLoadFileErrors(t *testing.T) {
	tests := []struct {
		name      string
		files     [][2]string
		wantPaths []string // nil: a plain error, not a ValidationError
	}{
		{"syntax error", [][2]string{{"a.yaml", "server_name: [unclosed\n"}}, nil},
		{"top level is a list", [][2]string{{"a.yaml", "- a\n- b\n"}}, nil},
		{
			name: "type errors name the file",
			files: [][2]string{
				{"a.yaml", minimalMain},
				{"b.yaml", "listeners: [{port: eighty, type: http}]\nenable_metrics: maybe\n"},
			},
			wantPaths: []string{"b.yaml"},
		},
		{
			name:      "stream writer given as a mapping",
			files:     [][2]string{{"a.yaml", minimalMain + "stream_writers: {events: {a: b}}\n"}},
			wantPaths: []string{"a.yaml"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			paths := writeFiles(t, tt.files...)
			_, err := config.Load(paths, nil)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			var ve *config.ValidationError
			if tt.wantPaths == nil {
				if errors.As(err, &ve) {
					t.Errorf("got ValidationError %v, want a plain error", err)
				}
				return
			}
			var got []string
			for _, p := range problemPaths(t, err) {
				got = append(got, filepath.Base(p))
			}
			if !slices.Equal(got, tt.wantPaths) {
				t.Errorf("problem files = %v, want %v\n%v", got, tt.wantPaths, err)
			}
			if !strings.Contains(err.Error(), "line ") {
				t.Errorf("type error should carry a line number: %v", err)
			}
		})
	}
	if _, err := config.Load(nil, nil); err == nil {
		t.Error("Load(nil) succeeded")
	}
	if _, err := config.Load([]string{filepath.Join(t.TempDir(), "missing.yaml")}, nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want ErrNotExist", err)
	}
}

func TestDatabaseArgsAndDSN(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{
			name: "full",
			yaml: `{user: synapse, password: "s3:cr/t", database: synapse, host: db, port: 5432, sslmode: verify-full,
                    keepalives_idle: 10, connect_timeout: 5, cp_min: 1, cp_max: 4}`,
			want: "postgres://synapse:s3%3Acr%2Ft@db:5432/synapse?connect_timeout=5&sslmode=verify-full",
		},
		{
			name: "unix socket, dbname alias, string port",
			yaml: `{user: synapse, dbname: hs, host: /var/run/postgresql, port: "5433"}`,
			want: "postgres://synapse@/hs?host=%2Fvar%2Frun%2Fpostgresql&port=5433",
		},
		{
			name: "ipv6 host without port",
			yaml: `{database: hs, host: "::1"}`,
			want: "postgres://[::1]/hs",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustLoad(t, nil, [2]string{"homeserver.yaml",
				minimalMain + "database:\n  name: psycopg2\n  args: " + tt.yaml + "\n"})
			if got := cfg.Database.DSN(); got != tt.want {
				t.Errorf("DSN = %q, want %q", got, tt.want)
			}
			if cfg.Database.Engine() != config.EnginePostgres {
				t.Errorf("Engine = %q", cfg.Database.Engine())
			}
		})
	}
}
