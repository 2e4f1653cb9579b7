package fleet_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/fleet"
)

// validDeployment is main + a persister + a writer + a client worker.
const validDeployment = `
config: [homeserver.yaml]
instances:
  - name: main
    listeners: [{port: 8008, resources: [client]}, {port: 9093, resources: [replication, metrics]}]
  - name: persister1
    app: synapse.app.generic_worker
    listeners: [{port: 9094, resources: [replication, metrics]}]
    stream_writers: [events]
  - name: writer1
    app: ganglion.app.generic_worker
    listeners: [{port: 9096, resources: [replication]}]
    stream_writers: [typing, to_device, account_data, receipts, presence]
  - name: worker1
    app: client_reader
    listeners: [{port: 8081, resources: [client]}, {port: 9097, bind_address: 0.0.0.0, resources: [replication]}]
restart: {min_backoff: 500ms, max_backoff: 10s}
`

func TestParseDefaults(t *testing.T) {
	d, err := fleet.Parse([]byte(validDeployment), "/srv/ganglion/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if d.BindAddress != "127.0.0.1" || d.RunDirPath() != "/srv/ganglion/.ganglion-up" {
		t.Errorf("bind %q run dir %q", d.BindAddress, d.RunDirPath())
	}
	if got := d.ConfigPaths(); len(got) != 1 || got[0] != "/srv/ganglion/homeserver.yaml" {
		t.Errorf("config paths %q", got)
	}
	if d.Restart.MinBackoff != 500*time.Millisecond || d.Restart.MaxBackoff != 10*time.Second ||
		d.Restart.ResetAfter != fleet.DefaultResetAfter || d.StopTimeout != fleet.DefaultStopTimeout {
		t.Errorf("restart %+v stop %v", d.Restart, d.StopTimeout)
	}
	roles := map[string]string{}
	for _, in := range d.Instances {
		roles[in.Name] = in.Role()
	}
	if roles["main"] != "main" || roles["persister1"] != "generic_worker" || roles["worker1"] != "generic_worker" {
		t.Errorf("roles %v", roles)
	}
}

func TestParseErrors(t *testing.T) {
	// Each case replaces the instances (or adds keys) of a minimal valid
	// file and lists the problems expected, as "path: message fragment".
	const head = "config: [homeserver.yaml]\n"
	const mainOK = "  - {name: main, listeners: [{port: 9093, resources: [replication]}]}\n"
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"empty file", "", []string{"config: required", "instances: required"}},
		{"unknown key", head + "instance:\n" + mainOK, []string{"field instance not found"}},
		{"no main", head + "instances:\n  - {name: w1, app: generic_worker, listeners: [{port: 1, resources: [client]}]}\n",
			[]string{"instances: no instance named main"}},
		{"duplicate names", head + "instances:\n" + mainOK +
			"  - {name: w1, app: generic_worker, listeners: [{port: 2, resources: [client]}]}\n" +
			"  - {name: w1, app: generic_worker, listeners: [{port: 3, resources: [client]}]}\n",
			[]string{`instances[2].name: duplicate instance name "w1" (also instances[1])`}},
		{"duplicate ports", head + "instances:\n" + mainOK +
			"  - {name: w1, app: generic_worker, listeners: [{port: 8008, resources: [client]}, {port: 9093, resources: [client]}]}\n",
			[]string{"instances[1].listeners[1].port: port 9093 is already used by instances[0].listeners[0] (main)"}},
		{"bad port", head + "instances:\n  - {name: main, listeners: [{port: 70000, resources: [client]}]}\n",
			[]string{"instances[0].listeners[0].port: must be between 1 and 65535"}},
		{"unknown resource", head + "instances:\n  - {name: main, listeners: [{port: 1, resources: [client, sync]}]}\n",
			[]string{`instances[0].listeners[0].resources[1]: unknown resource "sync"`}},
		{"no resources", head + "instances:\n  - {name: main, listeners: [{port: 1}]}\n",
			[]string{"instances[0].listeners[0].resources: required"}},
		{"unknown stream", head + "instances:\n" + mainOK +
			"  - {name: w1, app: generic_worker, listeners: [{port: 2, resources: [replication]}], stream_writers: [events, typnig]}\n",
			[]string{`instances[1].stream_writers[1]: unknown stream "typnig"`}},
		{"stream listed twice", head + "instances:\n" + mainOK +
			"  - {name: w1, app: generic_worker, listeners: [{port: 2, resources: [replication]}], stream_writers: [events, events]}\n",
			[]string{`instances[1].stream_writers[1]: "events" listed twice`}},
		{"two typing writers", head + "instances:\n" + mainOK +
			"  - {name: w1, app: generic_worker, listeners: [{port: 2, resources: [replication]}], stream_writers: [typing]}\n" +
			"  - {name: w2, app: generic_worker, listeners: [{port: 3, resources: [replication]}], stream_writers: [typing]}\n",
			[]string{"instances: stream typing: only one writer allowed, got 2 (w1, w2)"}},
		{"writer without replication", head + "instances:\n" + mainOK +
			"  - {name: w1, app: generic_worker, listeners: [{port: 2, resources: [client]}], stream_writers: [events]}\n",
			[]string{"instances[1].stream_writers: a stream writer needs a listener with the replication resource"}},
		{"two replication listeners", head + "instances:\n" +
			"  - {name: main, listeners: [{port: 1, resources: [replication]}, {port: 2, resources: [replication]}]}\n",
			[]string{"instances[0].listeners: 2 listeners with the replication resource"}},
		{"main without replication but workers", head + "instances:\n" +
			"  - {name: main, listeners: [{port: 1, resources: [client]}]}\n" +
			"  - {name: w1, app: generic_worker, listeners: [{port: 2, resources: [client]}]}\n",
			[]string{"instances[0].listeners: workers reach the main process through instance_map.main"}},
		{"router without listener", head + "instances:\n" + mainOK + "  - {name: r, app: router}\n",
			[]string{"instances[1].listeners: a router needs a listener"}},
		{"router as a replication peer and writer", head + "instances:\n" + mainOK +
			"  - {name: r, app: router, listeners: [{port: 2, resources: [client, replication]}], stream_writers: [typing]}\n",
			[]string{"instances[1].listeners[0].resources: a router is not a replication peer",
				"instances[1].stream_writers: a router writes no stream"}},
		{"router listeners", head + "instances:\n" + mainOK +
			"  - {name: r, app: router, listeners: [{port: 2, resources: [metrics]}, {port: 3, resources: [client]}]}\n",
			[]string{"instances[1].listeners[0].resources: the first listener of a router is the proxy",
				`instances[1].listeners[1].resources: the second listener of a router serves metrics only, got "client"`}},
		{"main without listeners", head + "instances:\n  - {name: main}\n",
			[]string{"instances[0].listeners: the main process needs a listener"}},
		{"main with a worker app", head + "instances:\n  - {name: main, app: generic_worker, listeners: [{port: 1, resources: [client]}]}\n",
			[]string{"instances[0].app: the instance named main is the main process"}},
		{"worker without app", head + "instances:\n" + mainOK + "  - {name: w1, listeners: [{port: 2, resources: [client]}]}\n",
			[]string{"instances[1].app: required for a worker"}},
		{"unknown app", head + "instances:\n" + mainOK + "  - {name: w1, app: synapse.app.frobnicator}\n",
			[]string{`instances[1].app: unknown worker app "synapse.app.frobnicator"`}},
		{"worker as main app", head + "instances:\n" + mainOK + "  - {name: w1, app: synapse.app.homeserver}\n",
			[]string{"instances[1].app: \"synapse.app.homeserver\" is the main process"}},
		{"bad names", head + "instances:\n" + mainOK +
			"  - {name: ../evil, app: generic_worker}\n  - {name: master, app: generic_worker}\n  - {name: fleet, app: generic_worker}\n  - {app: generic_worker}\n",
			[]string{`instances[1].name: "../evil": use letters`, `instances[2].name: "master" is an alias`,
				`instances[3].name: "fleet" is reserved`, "instances[4].name: required"}},
		{"bad bind address", head + "bind_address: 'not an address'\ninstances:\n" + mainOK,
			[]string{`bind_address: "not an address" is not an IP address or host name`}},
		{"backoff order", head + "restart: {min_backoff: 10s, max_backoff: 1s}\ninstances:\n" + mainOK,
			[]string{"restart.max_backoff: 1s is less than min_backoff 10s"}},
		{"bad duration", head + "restart: {min_backoff: 10}\ninstances:\n" + mainOK,
			[]string{"cannot unmarshal"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := fleet.Parse([]byte(tt.yaml), "deployment.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			var ve *config.ValidationError
			isValidation := errors.As(err, &ve)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if isValidation && len(ve.Problems) != len(tt.want) {
				t.Errorf("got %d problems, want %d:\n%v", len(ve.Problems), len(tt.want), err)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := fleet.Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "read deployment") {
		t.Fatalf("err = %v", err)
	}
}
