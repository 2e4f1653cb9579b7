package config_test

import (
	"testing"

	"ganglion/internal/config"
)

// TestLegacyAppserviceWorkerNotifies: with Synapse's legacy layout
// (notify_appservices: false in the shared file, one worker running
// worker_app synapse.app.appservice) exactly that worker runs the
// appservice notifier, not main and not a generic worker. The app wires
// the notifier on NotifiesAppservices alone (internal/app/appservice.go).
func TestLegacyAppserviceWorkerNotifies(t *testing.T) {
	shared := [2]string{"shared.yaml", sharedFleet + "notify_appservices: false\n"}
	for _, tt := range []struct {
		name   string
		worker string // the worker file, empty for main
		want   bool
	}{
		{"main", "", false},
		{"legacy appservice worker", "worker_app: synapse.app.appservice\nworker_name: as1\n", true},
		{"generic worker", "worker_app: synapse.app.generic_worker\nworker_name: generic1\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			files := [][2]string{shared}
			if tt.worker != "" {
				files = append(files, [2]string{"worker.yaml", tt.worker})
			}
			cfg := mustLoad(t, nil, files...)
			if got := cfg.NotifiesAppservices(); got != tt.want {
				t.Errorf("NotifiesAppservices = %v, want %v", got, tt.want)
			}
		})
	}
	// Left at its default, main notifies, and a legacy appservice worker
	// is refused (as Synapse does) rather than silently idle.
	main := mustLoad(t, nil, [2]string{"shared.yaml", sharedFleet})
	if !main.NotifiesAppservices() {
		t.Errorf("default notify_appservices: main does not notify")
	}
	_, err := config.Load(writeFiles(t, [2]string{"shared.yaml", sharedFleet},
		[2]string{"worker.yaml", "worker_app: synapse.app.appservice\nworker_name: as1\n"}), envMap(nil))
	if got := problemPaths(t, err); len(got) != 1 || got[0] != "notify_appservices" {
		t.Errorf("legacy appservice worker with notify_appservices unset: problems %v, want [notify_appservices]", got)
	}
}
