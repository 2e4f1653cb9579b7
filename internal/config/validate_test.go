package config_test

import (
	"slices"
	"strings"
	"testing"

	"ganglion/internal/config"
)

// validFleet is a shared config that validates on its own; each case below
// layers an overlay file on top, exercising the merge as a side effect.
const validFleet = `
server_name: example.org
public_baseurl: https://matrix.example.org
database:
  name: psycopg2
  args: {user: synapse, database: synapse, host: db.internal}
redis: {enabled: true}
listeners:
  - {port: 8008, type: http, x_forwarded: true, bind_addresses: ['0.0.0.0'], resources: [{names: [client, federation]}]}
  - {port: 9093, type: http, bind_addresses: ['127.0.0.1', '::1', localhost], resources: [{names: [replication]}]}
instance_map:
  main: {host: 127.0.0.1, port: 9093}
  persister1: {host: 127.0.0.1, port: 9094}
stream_writers:
  events: [main, persister1]
  typing: persister1
`

const genericWorker = `
worker_app: synapse.app.generic_worker
worker_name: persister1
`

func TestValidateAcceptsGoodConfigs(t *testing.T) {
	tests := []struct {
		name  string
		files [][2]string
	}{
		{"minimal main", [][2]string{{"hs.yaml", minimalMain}}},
		{"fleet main", [][2]string{{"hs.yaml", validFleet}}},
		{"fleet worker", [][2]string{{"hs.yaml", validFleet}, {"w.yaml", genericWorker}}},
		{"router", [][2]string{{"hs.yaml", validFleet}, {"r.yaml", "worker_app: router\nworker_name: router1\n"}}},
		{"legacy pusher app with start_pushers false", [][2]string{{"hs.yaml", validFleet + "start_pushers: false\n"},
			{"w.yaml", "worker_app: synapse.app.pusher\nworker_name: pusher1\n"}}},
		{"legacy appservice app with notify_appservices false", [][2]string{{"hs.yaml", validFleet + "notify_appservices: false\n"},
			{"w.yaml", "worker_app: synapse.app.appservice\nworker_name: as1\n"}}},
		{"replication on a public address with a secret", [][2]string{{"hs.yaml", validFleet}, {"o.yaml", `
worker_replication_secret: s3cret
listeners: [{port: 9093, type: http, resources: [{names: [replication]}]}]
`}}},
		{"instance on a unix socket", [][2]string{{"hs.yaml", validFleet}, {"o.yaml", `
instance_map: {persister1: {host: null, port: null, path: /run/ganglion/p1.sock}}
`}}},
		{"server name forms", [][2]string{{"hs.yaml", validFleet}, {"o.yaml", "server_name: '[::1]:8448'\n"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := config.Load(writeFiles(t, tt.files...), nil); err != nil {
				t.Errorf("Load: %v", err)
			}
		})
	}
}

func TestValidateReportsKeyPaths(t *testing.T) {
	tests := []struct {
		name      string
		overlay   string // merged over validFleet
		wantPaths []string
		wantMsg   string // optional substring of the error
	}{
		{
			name:      "server_name required",
			overlay:   "server_name: null\n",
			wantPaths: []string{"server_name"},
		},
		{
			name:      "server_name is not a URL",
			overlay:   "server_name: https://example.org\n",
			wantPaths: []string{"server_name"},
		},
		{
			name:      "server_name bad port",
			overlay:   "server_name: example.org:99999\n",
			wantPaths: []string{"server_name"},
		},
		{
			name:      "public_baseurl not http",
			overlay:   "public_baseurl: ftp://example.org\n",
			wantPaths: []string{"public_baseurl"},
		},
		{
			name: "listener ports out of range",
			overlay: `listeners:
  - {port: 0, type: http, bind_addresses: ['127.0.0.1']}
  - {port: 70000, type: http, bind_addresses: ['127.0.0.1']}
`,
			wantPaths: []string{"listeners[0].port", "listeners[1].port"},
		},
		{
			name: "listener type and resources",
			overlay: `listeners:
  - {port: 9000, type: metrics, bind_addresses: ['127.0.0.1']}
  - {port: 8008, bind_addresses: ['127.0.0.1'], resources: [{names: [client, webclient]}, {names: [consent]}]}
`,
			wantPaths: []string{"listeners[0].type", "listeners[1].resources[0].names[1]",
				"listeners[1].resources[1].names[0]", "listeners[1].type"},
		},
		{
			name:      "worker listeners are checked too",
			overlay:   "worker_listeners: [{port: 8034, type: tcp, bind_addresses: ['127.0.0.1']}]\n",
			wantPaths: []string{"worker_listeners[0].type"},
		},
		{
			name: "replication listener on a public address needs a secret",
			overlay: `listeners:
  - {port: 9093, type: http, bind_addresses: ['127.0.0.1', '10.0.0.1'], resources: [{names: [replication]}]}
  - {port: 9094, type: http, resources: [{names: [client, replication]}]}
`,
			wantPaths: []string{"listeners[0].bind_addresses", "listeners[1].bind_addresses"},
			wantMsg:   `non-loopback address "10.0.0.1" needs worker_replication_secret`,
		},
		{
			name:      "database name",
			overlay:   "database: {name: mysql}\n",
			wantPaths: []string{"database.name"},
		},
		{
			name:      "database pool and sslmode",
			overlay:   "database: {args: {cp_min: 8, cp_max: 4, sslmode: sometimes}}\n",
			wantPaths: []string{"database.args.cp_min", "database.args.sslmode"},
		},
		{
			name:      "worker needs instance_map.main and worker_name",
			overlay:   "worker_app: generic_worker\ninstance_map: {main: null}\n",
			wantPaths: []string{"instance_map.main", "worker_name"},
		},
		{
			name:      "worker_name main is reserved",
			overlay:   "worker_app: generic_worker\nworker_name: master\n",
			wantPaths: []string{"worker_name"},
		},
		{
			name:      "legacy replication host without port",
			overlay:   "worker_app: generic_worker\nworker_name: w1\ninstance_map: {main: null}\nworker_replication_host: 10.0.0.1\n",
			wantPaths: []string{"instance_map.main", "worker_replication_http_port"},
		},
		{
			name:      "unknown worker_app",
			overlay:   "worker_app: synapse.app.frobnicator\nworker_name: w1\n",
			wantPaths: []string{"worker_app"},
		},
		{
			name:      "writer missing from instance_map",
			overlay:   "stream_writers: {events: [main, persister1, ghost], receipts: [ghost2]}\n",
			wantPaths: []string{"stream_writers.events", "stream_writers.receipts"},
			wantMsg:   `writer "ghost" is not in instance_map`,
		},
		{
			name:      "device_lists writers need not be in instance_map",
			overlay:   "stream_writers: {device_lists: [dl1, dl2], typing: [persister1, main]}\n",
			wantPaths: []string{"stream_writers.typing"},
		},
		{
			name:      "two typing writers",
			overlay:   "stream_writers: {typing: [persister1, main]}\n",
			wantPaths: []string{"stream_writers.typing"},
			wantMsg:   "stream_writers.typing: only one writer allowed, got 2",
		},
		{
			name: "single-writer streams",
			overlay: `stream_writers:
  to_device: [main, persister1]
  account_data: []
  presence: [persister1, main]
  push_rules: [main, persister1]
`,
			wantPaths: []string{"stream_writers.account_data", "stream_writers.presence",
				"stream_writers.push_rules", "stream_writers.to_device"},
		},
		{
			name:      "multi-writer streams need at least one",
			overlay:   "stream_writers: {events: [], receipts: [], device_lists: []}\n",
			wantPaths: []string{"stream_writers.device_lists", "stream_writers.events", "stream_writers.receipts"},
		},
		{
			name:      "duplicate event persister",
			overlay:   "stream_writers: {events: [persister1, persister1]}\n",
			wantPaths: []string{"stream_writers.events"},
		},
		{
			name:      "unknown stream",
			overlay:   "stream_writers: {typng: persister1}\n",
			wantPaths: []string{"stream_writers.typng"},
		},
		{
			name:      "worker on sqlite",
			overlay:   "database: {name: sqlite3, args: {database: hs.db}}\nworker_app: generic_worker\nworker_name: persister1\n",
			wantPaths: []string{"database.name"},
			wantMsg:   "worker roles need PostgreSQL (database.name: psycopg2)",
		},
		{
			name:      "main with stream writers elsewhere on sqlite",
			overlay:   "database: {name: sqlite3, args: {database: hs.db}}\n",
			wantPaths: []string{"database.name"},
			wantMsg:   "worker roles need PostgreSQL",
		},
		{
			name:      "workers need redis",
			overlay:   "redis: {enabled: false}\n",
			wantPaths: []string{"redis.enabled"},
		},
		{
			name:      "replication secret and path",
			overlay:   "worker_replication_secret: a\nworker_replication_secret_path: /etc/ganglion/secret\n",
			wantPaths: []string{"worker_replication_secret_path"},
		},
		{
			name:      "registration secret and path",
			overlay:   "registration_shared_secret: a\nregistration_shared_secret_path: /etc/ganglion/reg\n",
			wantPaths: []string{"registration_shared_secret_path"},
		},
		{
			name:      "redis password and path",
			overlay:   "redis: {password: a, password_path: /etc/ganglion/redis}\n",
			wantPaths: []string{"redis.password_path"},
		},
		{
			name:      "legacy user_dir app while main still updates the directory",
			overlay:   "worker_app: synapse.app.user_dir\nworker_name: ud1\n",
			wantPaths: []string{"update_user_directory"},
		},
		{
			name:      "legacy appservice app with notify_appservices true",
			overlay:   "worker_app: synapse.app.appservice\nworker_name: as1\nnotify_appservices: true\n",
			wantPaths: []string{"notify_appservices"},
		},
		{
			name:      "legacy notify_appservices contradicts the modern option on main",
			overlay:   "notify_appservices: true\nnotify_appservices_from_worker: as1\n",
			wantPaths: []string{"notify_appservices"},
			wantMsg:   "contradicts notify_appservices_from_worker",
		},
		{
			name:      "legacy update_user_directory false contradicts designating main",
			overlay:   "update_user_directory: false\nupdate_user_directory_from_worker: master\n",
			wantPaths: []string{"update_user_directory"},
		},
		{
			name:      "legacy federation_sender app needs send_federation false",
			overlay:   "worker_app: synapse.app.federation_sender\nworker_name: fs1\n",
			wantPaths: []string{"send_federation"},
		},
		{
			name:      "legacy pusher app needs start_pushers false",
			overlay:   "worker_app: synapse.app.pusher\nworker_name: p1\nstart_pushers: true\n",
			wantPaths: []string{"start_pushers"},
		},
		{
			name:      "outbound federation proxy",
			overlay:   "outbound_federation_restricted_to: [persister1, nowhere]\n",
			wantPaths: []string{"outbound_federation_restricted_to"},
		},
		{
			name:      "bcrypt_rounds",
			overlay:   "bcrypt_rounds: 3\n",
			wantPaths: []string{"bcrypt_rounds"},
		},
		{
			name:      "max_upload_size",
			overlay:   "max_upload_size: 50X\n",
			wantPaths: []string{"max_upload_size"},
		},
		{
			name: "negative rate limits",
			overlay: `rc_message: {per_second: -1}
rc_registration: {burst_count: -2}
rc_login: {address: {per_second: -0.1}, failed_attempts: {burst_count: -3}}
`,
			wantPaths: []string{"rc_login.address.per_second", "rc_login.failed_attempts.burst_count",
				"rc_message.per_second", "rc_registration.burst_count"},
		},
		{
			name:      "instance_map entries",
			overlay:   "instance_map: {persister1: {host: '', port: 0}, both: {host: h, port: 1, path: /s}}\n",
			wantPaths: []string{"instance_map.both", "instance_map.persister1.host", "instance_map.persister1.port"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(writeFiles(t, [2]string{"shared.yaml", validFleet}, [2]string{"overlay.yaml", tt.overlay}), nil)
			if err == nil {
				t.Fatalf("Load succeeded, want problems at %v", tt.wantPaths)
			}
			if got := problemPaths(t, err); !slices.Equal(got, tt.wantPaths) {
				t.Errorf("problem paths = %v, want %v\nerror:\n%v", got, tt.wantPaths, err)
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error does not mention %q:\n%v", tt.wantMsg, err)
			}
		})
	}
}

func TestValidateReportsAllProblemsAtOnce(t *testing.T) {
	bad := `
public_baseurl: not a url
listeners:
  - {port: 0, type: https, bind_addresses: ['0.0.0.0'], resources: [{names: [replication, bogus]}]}
database: {name: sqlite3}
worker_app: synapse.app.generic_worker
stream_writers:
  events: [ghost]
  typing: [a, b]
worker_replication_secret: x
worker_replication_secret_path: /x
max_upload_size: lots
rc_message: {per_second: -1}
`
	_, err := config.Load(writeFiles(t, [2]string{"hs.yaml", bad}), nil)
	want := []string{
		"database.name",
		"instance_map.main",
		"listeners[0].port",
		"listeners[0].resources[0].names[1]",
		"listeners[0].type",
		"max_upload_size",
		"public_baseurl",
		"rc_message.per_second",
		"redis.enabled",
		"server_name",
		"stream_writers.events",
		"stream_writers.typing",
		"worker_name",
		"worker_replication_secret_path",
	}
	if got := problemPaths(t, err); !slices.Equal(got, want) {
		t.Errorf("problem paths:\n got %v\nwant %v\nerror:\n%v", got, want, err)
	}
	if lines := strings.Count(err.Error(), "\n") + 1; lines < len(want) {
		t.Errorf("Error() has %d lines for at least %d problems", lines, len(want))
	}
}

func TestValidateHandBuiltConfig(t *testing.T) {
	c := config.Default()
	c.ServerName = "example.org"
	c.MainListeners = []config.Listener{{Port: 8008, Type: "http",
		Resources: []config.ListenerResource{{Names: []string{"client"}}}}}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	c.Writers.Typing = config.StringList{"a", "b"}
	err := c.Validate()
	want := []string{"database.name", "redis.enabled", "stream_writers.typing"}
	if got := problemPaths(t, err); !slices.Equal(got, want) {
		t.Errorf("problem paths = %v, want %v\n%v", got, want, err)
	}
}
