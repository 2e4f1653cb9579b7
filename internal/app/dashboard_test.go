package app_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/metrics"
	"ganglion/internal/replication"
	"ganglion/internal/router"
	"ganglion/internal/streams"
)

// exportedNames collects the names of every series family a registry
// declares, including vectors no request has created a child of yet.
func exportedNames(t *testing.T, regs ...interface {
	Describe(chan<- *prometheus.Desc)
}) map[string]bool {
	t.Helper()
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for _, r := range regs {
		ch := make(chan *prometheus.Desc)
		go func() { r.Describe(ch); close(ch) }()
		for d := range ch {
			m := fq.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("descriptor without a name: %s", d)
			}
			names[m[1]] = true
		}
	}
	return names
}

// monolith builds (without serving) a main process on SQLite.
func monolith(t *testing.T) *app.Process {
	t.Helper()
	dir := t.TempDir()
	doc := map[string]any{
		"server_name":      "dash.test",
		"database":         map[string]any{"name": "sqlite3", "args": map[string]any{"database": filepath.Join(dir, "db.sqlite")}},
		"signing_key_path": filepath.Join(dir, "signing.key"),
		"report_stats":     false,
	}
	data, _ := json.Marshal(doc)
	path := filepath.Join(dir, "homeserver.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load([]string{path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p, err := app.New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = p.Run(ctx) // on a cancelled context: closes what New opened
	})
	return p
}

// fleetOnly registers what only a fleet process has (the Redis link, the
// replication client) on a registry of its own.
func fleetOnly(t *testing.T) *metrics.Registry {
	t.Helper()
	writers := map[streams.Name][]string{}
	for _, d := range streams.AllDefs() {
		writers[d.Name] = []string{"main"}
	}
	reg, err := streams.NewRegistry("main", streams.AllDefs(), writers, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	m := metrics.New("main")
	replication.NewReplicator(replication.NewBus("dash.test", replication.RedisOptions{}, log), reg, nil, log).
		RegisterMetrics(m.Registerer())
	replication.NewClient(replication.InstanceLookup(nil), "", "main", reg, log).RegisterMetrics(m.Registerer())
	return m
}

func routerRegistry(t *testing.T) *metrics.Registry {
	t.Helper()
	cfg := config.Default()
	cfg.ServerName = "dash.test"
	rc, err := router.NewConfig(cfg, router.Config{
		Listen:    config.Listener{Port: 8008, BindAddresses: []string{"127.0.0.1"}},
		Instances: map[string]router.InstanceURLs{"main": {ClientURL: "http://127.0.0.1:8080"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(cfg, rc, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return rt.Metrics()
}

// TestGrafanaDashboard checks contrib/grafana/ganglion.json against the
// series the code exports: every query names only exported series, and
// every ganglion_* family has a panel.
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile("../../contrib/grafana/ganglion.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	exported := exportedNames(t, monolith(t).Metrics(), fleetOnly(t), routerRegistry(t))
	for _, want := range []string{"ganglion_http_requests_total", "ganglion_stream_position", "ganglion_db_transaction_duration_seconds",
		"ganglion_replication_lag", "ganglion_router_requests_total", "go_sql_in_use_connections", "go_goroutines"} {
		if !exported[want] {
			t.Fatalf("the registries lack %s; the check would prove nothing", want)
		}
	}
	series := regexp.MustCompile(`\b(?:ganglion|go|process)_[a-z0-9_]+`)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := series.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q names no series", p.Title, tg.Expr)
			}
			for _, n := range names {
				fam := n
				if !exported[fam] {
					for _, suf := range []string{"_bucket", "_sum", "_count"} {
						if b, ok := strings.CutSuffix(n, suf); ok && exported[b] {
							fam = b
						}
					}
				}
				if !exported[fam] {
					t.Errorf("panel %q: %s is not a series Ganglion exports", p.Title, n)
				}
				used[fam] = true
			}
		}
	}
	var unpaneled []string
	for n := range exported {
		if strings.HasPrefix(n, "ganglion_") && !used[n] {
			unpaneled = append(unpaneled, n)
		}
	}
	slices.Sort(unpaneled)
	if len(unpaneled) > 0 {
		t.Errorf("series without a panel: %v", unpaneled)
	}
}
