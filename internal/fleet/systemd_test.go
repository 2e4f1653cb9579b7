package fleet_test

import (
	"path/filepath"
	"strings"
	"testing"

	"ganglion/internal/fleet"
)

func TestSystemdUnits(t *testing.T) {
	path := writeDeployment(t, validDeployment, "")
	d, plan, err := fleet.Prepare(path, "")
	if err != nil {
		t.Fatal(err)
	}
	units, err := fleet.SystemdUnits(d, plan, fleet.SystemdOptions{Binary: "/opt/my ganglion/ganglion", User: "matrix",
		EnvFile: "/etc/ganglion/env", WorkingDir: d.Dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(units) != 1+len(plan.Instances) || units[0].Name != "ganglion.target" {
		t.Fatalf("units %d, first %q", len(units), units[0].Name)
	}
	byName := map[string]string{}
	for _, u := range units {
		byName[u.Name] = string(u.Data)
	}
	worker := byName["ganglion-worker1.service"]
	want := []string{
		`ExecStart="/opt/my ganglion/ganglion" serve -c ` + filepath.Join(d.Dir, "homeserver.yaml") +
			" -c " + filepath.Join(plan.Dir, "fleet.yaml") + " -c " + filepath.Join(plan.Dir, "worker1.yaml") + "\n",
		"Restart=always\n", "User=matrix\n", "EnvironmentFile=-/etc/ganglion/env\n",
		"After=network-online.target ganglion-main.service\n", "PartOf=ganglion.target\n", "WantedBy=ganglion.target\n",
		"Description=Ganglion worker1 (generic_worker)\n",
	}
	for _, w := range want {
		if !strings.Contains(worker, w) {
			t.Errorf("worker1 unit lacks %q:\n%s", w, worker)
		}
	}
	if main := byName["ganglion-main.service"]; strings.Contains(main, "After=network-online.target ganglion-main") {
		t.Errorf("main ordered after itself:\n%s", main)
	}
}
