package fleet_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/fleet"
	"ganglion/internal/replication"
)

func statusJSON(t *testing.T, st app.Status) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWriteStatusTable(t *testing.T) {
	targets := []fleet.Target{{Name: "main", Role: "main"}, {Name: "persister1"}, {Name: "worker1"}, {Name: "gone", Role: "generic_worker"}}
	reports := []fleet.Report{
		{Instance: "main", Up: true, Status: statusJSON(t, app.Status{Instance: "main", Role: "main", UptimeSec: 3725,
			Redis:       &replication.Status{Connected: true, Reconnects: 2},
			WrittenHere: []string{"caches", "typing"},
			Positions: map[string]map[string]int64{
				"events": {"persister1": 90}, "typing": {"main": 7}, "caches": {"main": 4},
				"receipts": {"gone": 5},
			}})},
		{Instance: "persister1", Up: true, Status: statusJSON(t, app.Status{Instance: "persister1", Role: "generic_worker", UptimeSec: 60,
			Redis:       &replication.Status{Connected: false, Reconnects: 5},
			WrittenHere: []string{"caches", "events"},
			Positions:   map[string]map[string]int64{"events": {"persister1": 100}, "typing": {"main": 7}}})},
		{Instance: "worker1", Up: true, Status: statusJSON(t, app.Status{Instance: "worker1", Role: "generic_worker",
			Positions: map[string]map[string]int64{"events": {"persister1": 97}}})},
		{Instance: "gone", Error: "connection refused"},
	}
	var b strings.Builder
	if err := fleet.WriteStatusTable(&b, targets, reports); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	// Columns are aligned with spaces; compare words per line.
	wantLines := []string{
		"INSTANCE ROLE STATE UPTIME REDIS WRITES",
		"main main up 1h2m5s connected, 2 reconnects typing",
		"persister1 generic_worker up 1m0s disconnected, 5 reconnects events",
		"worker1 generic_worker up 0s - -",
		"gone generic_worker down - - -",
		"STREAM WRITER POSITION main persister1 worker1",
		// main saw 90 of persister1's 100, worker1 97.
		"events persister1 100 10 - 3",
		// worker1 never heard of typing's writer, which has written.
		"typing main 7 - 0 ?",
		// The receipts writer is down: its position is unknown.
		"receipts gone down ? ? ?",
		"gone: connection refused",
	}
	var lines []string
	for _, l := range strings.Split(got, "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	joined := strings.Join(lines, "\n")
	for _, w := range wantLines {
		if !strings.Contains(joined, w) {
			t.Errorf("table lacks line %q:\n%s", w, got)
		}
	}
	if strings.Contains(got, "caches") {
		t.Errorf("the caches stream is every instance's own; it should not be listed:\n%s", got)
	}
	if fleet.Down(reports) != 1 {
		t.Errorf("Down = %d", fleet.Down(reports))
	}
}

func TestQueryStatus(t *testing.T) {
	const secret = "s3cret"
	st := app.Status{Instance: "main", Role: "main", UptimeSec: 5, WrittenHere: []string{"events"},
		Positions: map[string]map[string]int64{"events": {"main": 3}}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/health":
			_, _ = w.Write([]byte("OK"))
		case r.URL.Path != replication.PathPrefix+"status" || r.Method != http.MethodGet:
			http.NotFound(w, r)
		case r.Header.Get("Authorization") != "Bearer "+secret:
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"bad secret"}`))
		default:
			_ = json.NewEncoder(w).Encode(st)
		}
	}))
	defer srv.Close()
	host, portStr, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	closed := freePort(t)

	targets := []fleet.Target{
		{Name: "main", Replication: &config.InstanceLocation{Host: host, Port: port}},
		{Name: "down", Replication: &config.InstanceLocation{Host: "127.0.0.1", Port: closed}},
		{Name: "healthonly", HealthURL: srv.URL + "/health"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reports := fleet.QueryStatus(ctx, targets, secret, 500*time.Millisecond)
	if !reports[0].Up || reports[0].Error != "" {
		t.Fatalf("main: %+v", reports[0])
	}
	var back app.Status
	if err := json.Unmarshal(reports[0].Status, &back); err != nil || back.Role != "main" || back.Positions["events"]["main"] != 3 {
		t.Errorf("main report %s (%v)", reports[0].Status, err)
	}
	if reports[1].Up || !strings.HasPrefix(reports[1].Error, "unreachable: ") {
		t.Errorf("closed port reported up: %+v", reports[1])
	}
	if !reports[2].Up || reports[2].Status != nil {
		t.Errorf("health-only: %+v", reports[2])
	}

	wrong := fleet.QueryStatus(ctx, targets[:1], "wrong", 500*time.Millisecond)
	if wrong[0].Up || !strings.Contains(wrong[0].Error, "M_FORBIDDEN") {
		t.Errorf("wrong secret: %+v", wrong[0])
	}
}

func TestTargetsFromConfig(t *testing.T) {
	cfg := &config.Config{InstanceMap: map[string]config.InstanceLocation{
		"worker1": {Host: "127.0.0.1", Port: 2}, "master": {Host: "127.0.0.1", Port: 1}, "a": {Host: "127.0.0.1", Port: 3},
	}}
	ts := fleet.TargetsFromConfig(cfg)
	var names []string
	for _, tg := range ts {
		names = append(names, tg.Name)
	}
	if strings.Join(names, ",") != "main,a,worker1" || ts[0].Replication.Port != 1 || ts[0].Role != "main" {
		t.Errorf("targets %+v", ts)
	}
}
