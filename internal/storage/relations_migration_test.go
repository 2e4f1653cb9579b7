package storage_test

import (
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// TestRelationsMigrationBackfills applies the migrations before
// event_relations, stores events the old way, and checks that the
// migration indexes the relations of those that have one (and not of
// malformed or redacted ones), so threads and edits sent before an upgrade
// keep their summaries.
func TestRelationsMigrationBackfills(t *testing.T) {
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
				if strings.Contains(ent.Name(), "_relations.") {
					found = true
					break
				}
				data, err := fs.ReadFile(storage.MigrationFiles(), "migrations/"+ent.Name())
				if err != nil {
					t.Fatal(err)
				}
				before["m/"+ent.Name()] = &fstest.MapFile{Data: data}
			}
			if !found {
				t.Fatal("no relations migration")
			}
			if err := db.MigrateFS(ctx, before, "m"); err != nil {
				t.Fatal(err)
			}
			rows := []struct {
				id, json string
			}{
				{"$root", `{"content":{"body":"root"}}`},
				{"$thread", `{"content":{"body":"r","m.relates_to":{"rel_type":"m.thread","event_id":"$root"}}}`},
				{"$react", `{"content":{"m.relates_to":{"rel_type":"m.annotation","event_id":"$root","key":"👍"}}}`},
				{"$reply", `{"content":{"body":"plain reply","m.relates_to":{"m.in_reply_to":{"event_id":"$root"}}}}`},
				{"$bad", `{"content":{"m.relates_to":{"rel_type":5,"event_id":"$root"}}}`},
				{"$redacted", `{"content":{"m.relates_to":{"rel_type":"m.reference","event_id":"$root"}}}`},
			}
			for i, r := range rows {
				if _, err := db.Exec(ctx, `INSERT INTO events (stream_ordering, event_id, room_id, instance_name, type, sender, depth,
					origin_server_ts, json) VALUES ($1, $2, '!r:x', 'main', 'm.room.message', '@a:x', 1, 7, $3)`, i+1, r.id, r.json); err != nil {
					t.Fatalf("insert %s: %v", r.id, err)
				}
			}
			if _, err := db.Exec(ctx, `INSERT INTO redactions (event_id, redacts) VALUES ('$x', '$redacted')`); err != nil {
				t.Fatal(err)
			}
			if err := db.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			qrows, err := db.Reader().QueryContext(ctx, `SELECT event_id, relates_to_id, rel_type, COALESCE(aggregation_key, ''),
				stream_ordering, origin_server_ts FROM event_relations`)
			if err != nil {
				t.Fatal(err)
			}
			defer qrows.Close()
			for qrows.Next() {
				var id, parent, rel, key string
				var so, ts int64
				if err := qrows.Scan(&id, &parent, &rel, &key, &so, &ts); err != nil {
					t.Fatal(err)
				}
				if parent != "$root" || ts != 7 || so == 0 {
					t.Errorf("%s: parent %s ts %d so %d", id, parent, ts, so)
				}
				got[id] = rel + "/" + key
			}
			if err := qrows.Err(); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"$thread": "m.thread/", "$react": "m.annotation/👍"}
			if len(got) != len(want) {
				t.Fatalf("backfilled %v, want %v", got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s: %q, want %q", k, got[k], v)
				}
			}
		})
	}
}
