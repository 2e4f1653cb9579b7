package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ganglion/internal/storage"
)

// rebuild-user-directory removes the user directory updater's position, the
// request the updater acts on (internal/userdir's
// TestDirectoryRebuildOnRequest); on a database the main process has not
// migrated it refuses, changing nothing.
func TestRebuildUserDirectoryCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "homeserver.db")
	cfgPath := filepath.Join(dir, "homeserver.yaml")
	cfg := "server_name: admin.test\nsigning_key_path: " + filepath.Join(dir, "signing.key") +
		"\ndatabase: {name: sqlite3, args: {database: " + dbPath + "}}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite, DSN: dbPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out bytes.Buffer
	if err := rebuildUserDirectory(ctx, []string{"-c", cfgPath}, &out); err == nil || !strings.Contains(err.Error(), "start the main process") {
		t.Fatalf("unmigrated database: err %v, want a refusal naming the main process", err)
	}

	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO user_directory_stream_pos (id, stream_id) VALUES (1, 42)`); err != nil {
		t.Fatal(err)
	}
	if err := rebuildUserDirectory(ctx, []string{"-c", cfgPath}, &out); err != nil {
		t.Fatalf("rebuild-user-directory: %v", err)
	}
	var n int
	if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM user_directory_stream_pos`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("position rows after the request: %d, %v; want 0", n, err)
	}
	if !strings.Contains(out.String(), "Requested a full rebuild") {
		t.Errorf("output %q", out.String())
	}
	if err := rebuildUserDirectory(ctx, nil, &out); err == nil || !strings.Contains(err.Error(), "-c is required") {
		t.Errorf("no -c: %v", err)
	}
}
