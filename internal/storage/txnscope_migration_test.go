package storage_test

import (
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// TestTxnScopeMigrationBackfills applies the migrations before txn_scope,
// stores events sent with txn ids the old way, and checks that the
// migration gives them the scope of the endpoint they were most likely
// sent through, so a client retrying across the upgrade gets its event
// back, and that the new unique index keys on the scope.
func TestTxnScopeMigrationBackfills(t *testing.T) {
	t.Parallel()
	for _, e := range storagetest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			db := storagetest.NewEmptyDB(t, e)
			ctx := testCtx(t)
			entries, err := fs.ReadDir(storage.MigrationFiles(), "migrations")
			if err != nil {
				t.Fatal(err)
			}
			before := fstest.MapFS{}
			found := false
			for _, ent := range entries {
				if strings.Contains(ent.Name(), "_txn_scope.") {
					found = true
					break // files are sorted: everything earlier is before it
				}
				data, err := fs.ReadFile(storage.MigrationFiles(), "migrations/"+ent.Name())
				if err != nil {
					t.Fatal(err)
				}
				before["m/"+ent.Name()] = &fstest.MapFile{Data: data}
			}
			if !found {
				t.Fatal("no txn_scope migration")
			}
			if err := db.MigrateFS(ctx, before, "m"); err != nil {
				t.Fatal(err)
			}
			insert := `INSERT INTO events (stream_ordering, event_id, room_id, instance_name, type, sender, depth,
				origin_server_ts, redacts, sender_device, txn_id, json) VALUES ($1, $2, '!r:x', 'main', $3, '@a:x', 1, 0, $4, 'DEV', $5, '{}')`
			rows := []struct {
				so             int64
				id, typ, txn   string
				redacts, scope any
			}{
				{1, "$msg", "m.room.message", "1", nil, "send/m.room.message"},
				{2, "$red", "m.room.redaction", "2", "$msg", "redact/$msg"},
				{3, "$plain", "m.room.message", "", nil, nil},
			}
			for _, r := range rows {
				var txn any
				if r.txn != "" {
					txn = r.txn
				}
				if _, err := db.Exec(ctx, insert, r.so, r.id, r.typ, r.redacts, txn); err != nil {
					t.Fatalf("insert %s: %v", r.id, err)
				}
			}
			if err := db.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				var scope *string
				if err := db.Reader().QueryRowContext(ctx, `SELECT txn_scope FROM events WHERE event_id = $1`, r.id).Scan(&scope); err != nil {
					t.Fatal(err)
				}
				switch want := r.scope.(type) {
				case nil:
					if scope != nil {
						t.Errorf("%s: txn_scope %q, want NULL", r.id, *scope)
					}
				case string:
					if scope == nil || *scope != want {
						t.Errorf("%s: txn_scope %v, want %q", r.id, scope, want)
					}
				}
			}
			// One txn id on two endpoints is allowed; twice on one is not.
			insert2 := `INSERT INTO events (stream_ordering, event_id, room_id, instance_name, type, sender, depth,
				origin_server_ts, sender_device, txn_scope, txn_id, json) VALUES ($1, $2, '!r:x', 'main', 'm.room.message', '@a:x', 1, 0, 'DEV', $3, '1', '{}')`
			if _, err := db.Exec(ctx, insert2, 4, "$other", "send/org.example.other"); err != nil {
				t.Fatalf("same txn id on another endpoint: %v", err)
			}
			if _, err := db.Exec(ctx, insert2, 5, "$again", "send/m.room.message"); !storage.IsUniqueViolation(err) {
				t.Fatalf("same txn id on the same endpoint: %v, want a unique violation", err)
			}
		})
	}
}
