package app_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// enable_metrics: false stops measuring requests and transactions (the
// benchmark's baseline for pricing the instrumentation) while the metrics
// listener still answers; unset, both are measured.
func TestEnableMetricsFalseStopsMeasuring(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setting any // nil: key absent
		want    bool
	}{{"unset", nil, true}, {"false", false, false}, {"true", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			client, metricsPort := freePort(t), freePort(t)
			doc := map[string]any{
				"server_name": "metrics.test",
				"listeners": []any{
					map[string]any{"port": client, "type": "http", "bind_addresses": []string{"127.0.0.1"},
						"resources": []any{map[string]any{"names": []string{"client"}}}},
					map[string]any{"port": metricsPort, "type": "http", "bind_addresses": []string{"127.0.0.1"},
						"resources": []any{map[string]any{"names": []string{"metrics"}}}},
				},
				"database":         map[string]any{"name": "sqlite3", "args": map[string]any{"database": filepath.Join(dir, "hs.db")}},
				"signing_key_path": filepath.Join(dir, "key"),
				"media_store_path": filepath.Join(dir, "media"),
				"report_stats":     false,
			}
			if tc.setting != nil {
				doc["enable_metrics"] = tc.setting
			}
			path := writeYAML(t, dir, "homeserver.yaml", doc)
			startInProcess(t, []string{path}, func(string) string { return "" }, "main", tracetest.NewInMemoryExporter(), io.Discard)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			get := func(url string) (int, string) {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatalf("GET %s: %v", url, err)
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(body)
			}
			for range 3 {
				if code, _ := get(fmt.Sprintf("http://127.0.0.1:%d/_matrix/client/versions", client)); code != 200 {
					t.Fatalf("versions: %d", code)
				}
			}
			code, body := get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
			if code != 200 {
				t.Fatalf("metrics: %d", code)
			}
			measuredRequests := strings.Contains(body, "ganglion_http_requests_total{")
			measuredTx := strings.Contains(body, "ganglion_db_transaction_duration_seconds_count{")
			if measuredRequests != tc.want || measuredTx != tc.want {
				t.Fatalf("enable_metrics %v: request series %v, transaction series %v; want both %v",
					tc.setting, measuredRequests, measuredTx, tc.want)
			}
			// The process's own series are there either way.
			if !strings.Contains(body, "go_goroutines") {
				t.Fatal("runtime series missing")
			}
		})
	}
}
