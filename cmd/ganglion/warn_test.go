package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ganglion/internal/config"
)

// Keys of features not built yet are warned about once each at start;
// other unknown keys stay at debug level.
func TestWarnIgnoredKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "homeserver.yaml")
	doc := `server_name: example.org
listeners: [{port: 8008, type: http, bind_addresses: [127.0.0.1], resources: [{names: [client]}]}]
oidc_providers: [{idp_id: x}]
retention: {enabled: true}
worker_daemonize: false
`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load([]string{path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	warnIgnoredKeys(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), cfg)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var warns, debugs []string
	for _, l := range lines {
		switch {
		case strings.Contains(l, "level=WARN"):
			warns = append(warns, l)
		case strings.Contains(l, "level=DEBUG"):
			debugs = append(debugs, l)
		}
	}
	if len(warns) != 2 || !strings.Contains(warns[0], "key=oidc_providers") || !strings.Contains(warns[1], "key=retention") ||
		!strings.Contains(warns[0], `feature="single sign-on"`) {
		t.Errorf("warnings %q, want one each for oidc_providers and retention, naming the feature", warns)
	}
	if len(debugs) != 1 || !strings.Contains(debugs[0], "key=worker_daemonize") {
		t.Errorf("debug lines %q, want one for worker_daemonize", debugs)
	}
}
