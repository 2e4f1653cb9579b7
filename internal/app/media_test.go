package app_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/storage"
	"ganglion/internal/testutil"
)

// The media cleanup job is wired into a process that serves media: an id
// reserved by /create whose time ran out is deleted by the running
// process, and an id still waiting is kept.
func TestMediaCleanupJobRuns(t *testing.T) {
	dir := t.TempDir()
	doc := `server_name: app.test
listeners: [{port: 8448, type: http, bind_addresses: [127.0.0.1], resources: [{names: [client]}]}]
database: {name: sqlite3, args: {database: ` + filepath.Join(dir, "hs.db") + `}}
signing_key_path: ` + filepath.Join(dir, "key") + `
media_store_path: ` + filepath.Join(dir, "media") + `
report_stats: false
`
	path := filepath.Join(dir, "homeserver.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load([]string{path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.RunsMediaBackgroundJobs() {
		t.Fatal("a monolith must run the media jobs")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := app.New(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite, DSN: cfg.Database.DSN()}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Now().UnixMilli()
	for id, expires := range map[string]int64{"expired": now - 1000, "waiting": now + 3600_000} {
		if _, err := db.Exec(ctx, `INSERT INTO media (server_name, media_id, user_id, created_ts, unused_expires_at)
			VALUES ('app.test', $1, '@a:app.test', $2, $3)`, id, now, expires); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	count := func(id string) int {
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM media WHERE media_id = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	testutil.Eventually(t, 10*time.Second, "the expired reservation to be deleted", func() bool { return count("expired") == 0 })
	if count("waiting") != 1 {
		t.Fatal("a reservation still waiting for its content was deleted")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
