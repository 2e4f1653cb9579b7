package storage_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestOpenRejectsBadOptions(t *testing.T) {
	t.Parallel()
	for _, opts := range []storage.Options{
		{Engine: "mysql", DSN: "x"},
		{Engine: storage.SQLite, DSN: ":memory:"},
		{Engine: storage.SQLite, DSN: ""},
		{Engine: storage.Postgres, DSN: "not a url ::"},
	} {
		if db, err := storage.Open(testCtx(t), opts, nil); err == nil {
			db.Close()
			t.Errorf("Open(%+v) succeeded, want error", opts)
		}
	}
}

func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	if storage.LatestSchemaVersion() < 1 {
		t.Fatalf("LatestSchemaVersion() = %d, want >= 1", storage.LatestSchemaVersion())
	}
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		v, err := db.SchemaVersion(ctx)
		if err != nil || v != storage.LatestSchemaVersion() {
			t.Fatalf("SchemaVersion() = %d, %v; want %d", v, err, storage.LatestSchemaVersion())
		}
		before := appliedMigrations(t, db)
		if err := db.Migrate(ctx); err != nil {
			t.Fatalf("second Migrate: %v", err)
		}
		if after := appliedMigrations(t, db); !slices.Equal(before, after) {
			t.Errorf("second Migrate changed schema_migrations:\n before %v\n after  %v", before, after)
		}
		if len(before) != storage.LatestSchemaVersion() {
			t.Errorf("schema_migrations has %d rows, want %d", len(before), storage.LatestSchemaVersion())
		}
	})
}

func appliedMigrations(t *testing.T, db *storage.DB) []string {
	t.Helper()
	rows, err := db.Reader().QueryContext(testCtx(t), `SELECT version, name, applied_ts FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v, ts int64
		var name string
		if err := rows.Scan(&v, &name, &ts); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%d/%s/%d", v, name, ts))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSchemaVersionOfEmptyDatabase(t *testing.T) {
	t.Parallel()
	for _, e := range storagetest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			db := storagetest.NewEmptyDB(t, e)
			if v, err := db.SchemaVersion(testCtx(t)); err != nil || v != 0 {
				t.Fatalf("SchemaVersion() = %d, %v; want 0", v, err)
			}
		})
	}
}

// Two handles on one database stand in for two processes starting at once.
func TestConcurrentMigrateAppliesOnce(t *testing.T) {
	t.Parallel()
	for _, e := range storagetest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			var opts storage.Options
			if e == storage.Postgres {
				opts = storage.Options{Engine: e, DSN: storagetest.NewPostgresDatabase(t)}
			} else {
				opts = storage.Options{Engine: e, DSN: filepath.Join(t.TempDir(), "db")}
			}
			ctx := testCtx(t)
			dbs := make([]*storage.DB, 3)
			for i := range dbs {
				db, err := storage.Open(ctx, opts, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
				dbs[i] = db
			}
			errs := make([]error, len(dbs))
			var wg sync.WaitGroup
			for i, db := range dbs {
				wg.Go(func() { errs[i] = db.Migrate(ctx) })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("concurrent Migrate: %v", err)
			}
			if got := appliedMigrations(t, dbs[0]); len(got) != storage.LatestSchemaVersion() {
				t.Fatalf("schema_migrations = %v, want %d rows", got, storage.LatestSchemaVersion())
			}
		})
	}
}

func TestParseMigrations(t *testing.T) {
	t.Parallel()
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	tests := []struct {
		name    string
		files   fstest.MapFS
		want    map[storage.Engine][]string // chosen file per version
		wantErr bool
	}{
		{
			name: "shared and variants",
			files: fstest.MapFS{
				"m/0001_a.sql":          file("a"),
				"m/0002_b.sql":          file("b"),
				"m/0002_b.postgres.sql": file("b pg"),
				"m/0003_c.postgres.sql": file("c pg"),
				"m/0003_c.sqlite.sql":   file("c lite"),
			},
			want: map[storage.Engine][]string{
				storage.Postgres: {"0001_a.sql", "0002_b.postgres.sql", "0003_c.postgres.sql"},
				storage.SQLite:   {"0001_a.sql", "0002_b.sql", "0003_c.sqlite.sql"},
			},
		},
		{name: "empty", files: fstest.MapFS{"m": {Mode: fs.ModeDir}}},
		{name: "stray file", files: fstest.MapFS{"m/README": file("")}, wantErr: true},
		{name: "variant for one engine only", files: fstest.MapFS{"m/0001_a.postgres.sql": file("")}, wantErr: true},
		{name: "gap", files: fstest.MapFS{"m/0001_a.sql": file(""), "m/0003_c.sql": file("")}, wantErr: true},
		{name: "starts at zero", files: fstest.MapFS{"m/0000_a.sql": file("")}, wantErr: true},
		{name: "number reused", files: fstest.MapFS{"m/0001_a.sql": file(""), "m/0001_b.sql": file("")}, wantErr: true},
		{name: "bad name", files: fstest.MapFS{"m/1_a.sql": file("")}, wantErr: true},
		{name: "unknown engine", files: fstest.MapFS{"m/0001_a.mysql.sql": file("")}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, e := range storagetest.Engines() {
				migs, err := storage.ParseMigrations(tt.files, "m", e)
				if tt.name == "empty" {
					// No files is a valid (empty) set.
					if err != nil || len(migs) != 0 {
						t.Fatalf("%s: got %v, %v; want no migrations", e, migs, err)
					}
					continue
				}
				if tt.wantErr {
					if err == nil {
						t.Fatalf("%s: got %v, want error", e, migs)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", e, err)
				}
				var got []string
				for i, m := range migs {
					if m.Version != i+1 {
						t.Errorf("%s: migration %d has version %d", e, i, m.Version)
					}
					got = append(got, m.File)
				}
				if !slices.Equal(got, tt.want[e]) {
					t.Errorf("%s: files = %v, want %v", e, got, tt.want[e])
				}
			}
		})
	}
}

// The embedded set must be valid for both engines whichever one a test runs
// on; Migrate on each engine only proves its own half.
func TestEmbeddedMigrationsParse(t *testing.T) {
	t.Parallel()
	for _, e := range storagetest.Engines() {
		migs, err := storage.ParseMigrations(storage.MigrationFiles(), "migrations", e)
		if err != nil {
			t.Fatalf("%s: %v", e, err)
		}
		if len(migs) != storage.LatestSchemaVersion() {
			t.Fatalf("%s: %d migrations, LatestSchemaVersion %d", e, len(migs), storage.LatestSchemaVersion())
		}
	}
}

func TestMigrateMultiStatementAndRollback(t *testing.T) {
	t.Parallel()
	for _, e := range storagetest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			db := storagetest.NewEmptyDB(t, e)
			ctx := testCtx(t)
			good := fstest.MapFS{
				"m/0001_two_tables.sql": {Data: []byte(`
					CREATE TABLE t1 (a INTEGER);
					CREATE TABLE t2 (b INTEGER);
					INSERT INTO t1 (a) VALUES (1);
					INSERT INTO t2 (b) VALUES (2);`)},
			}
			if err := db.MigrateFS(ctx, good, "m"); err != nil {
				t.Fatal(err)
			}
			var sum int
			if err := db.Reader().QueryRowContext(ctx, `SELECT (SELECT a FROM t1) + (SELECT b FROM t2)`).Scan(&sum); err != nil || sum != 3 {
				t.Fatalf("multi-statement migration: sum = %d, %v; want 3", sum, err)
			}

			bad := fstest.MapFS{
				"m/0001_two_tables.sql": good["m/0001_two_tables.sql"],
				"m/0002_broken.sql": {Data: []byte(`
					CREATE TABLE t3 (c INTEGER);
					INSERT INTO t1 (a) VALUES (10);
					CREATE TABLE t4 (d INTEGER;`)},
			}
			if err := db.MigrateFS(ctx, bad, "m"); err == nil {
				t.Fatal("broken migration applied without error")
			}
			if v, err := db.SchemaVersion(ctx); err != nil || v != 1 {
				t.Fatalf("after failed migration SchemaVersion() = %d, %v; want 1", v, err)
			}
			if _, err := db.Reader().ExecContext(ctx, `SELECT c FROM t3`); err == nil {
				t.Error("table t3 from the failed migration exists")
			}
			var n int
			if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM t1`).Scan(&n); err != nil || n != 1 {
				t.Errorf("t1 has %d rows (%v) after failed migration, want 1", n, err)
			}
		})
	}
}

func TestMigrateRefusesUnknownSchema(t *testing.T) {
	t.Parallel()
	for _, e := range storagetest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			db := storagetest.NewEmptyDB(t, e)
			ctx := testCtx(t)
			newer := fstest.MapFS{"m/0001_a.sql": {Data: []byte(`SELECT 1`)}, "m/0002_b.sql": {Data: []byte(`SELECT 1`)}}
			if err := db.MigrateFS(ctx, newer, "m"); err != nil {
				t.Fatal(err)
			}
			older := fstest.MapFS{"m/0001_a.sql": newer["m/0001_a.sql"]}
			if err := db.MigrateFS(ctx, older, "m"); !errors.Is(err, storage.ErrSchemaTooNew) {
				t.Errorf("Migrate with fewer migrations than applied: %v, want ErrSchemaTooNew", err)
			}
			renamed := fstest.MapFS{"m/0001_a.sql": newer["m/0001_a.sql"], "m/0002_other.sql": {Data: []byte(`SELECT 1`)}}
			if err := db.MigrateFS(ctx, renamed, "m"); err == nil {
				t.Error("Migrate accepted a database whose migration 0002 has another name")
			}
		})
	}
}

func TestWaitForSchema(t *testing.T) {
	t.Parallel()
	for _, e := range storagetest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			t.Run("already migrated", func(t *testing.T) {
				db := storagetest.NewDB(t, e)
				if err := db.WaitForSchema(testCtx(t)); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("returns once migrated", func(t *testing.T) {
				db := storagetest.NewEmptyDB(t, e)
				ctx := testCtx(t)
				done := make(chan error, 1)
				go func() { done <- db.WaitForSchema(ctx) }()
				if err := db.Migrate(ctx); err != nil {
					t.Fatal(err)
				}
				if err := <-done; err != nil {
					t.Fatalf("WaitForSchema: %v", err)
				}
			})
			t.Run("gives up on cancel", func(t *testing.T) {
				db := storagetest.NewEmptyDB(t, e)
				ctx, cancel := context.WithCancel(testCtx(t))
				done := make(chan error, 1)
				go func() { done <- db.WaitForSchema(ctx) }()
				cancel()
				if err := <-done; !errors.Is(err, context.Canceled) {
					t.Fatalf("WaitForSchema after cancel: %v, want context.Canceled", err)
				}
			})
			t.Run("schema too new", func(t *testing.T) {
				db := storagetest.NewEmptyDB(t, e)
				ctx := testCtx(t)
				if err := db.Migrate(ctx); err != nil {
					t.Fatal(err)
				}
				// Pretend a newer binary added a migration.
				if _, err := db.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_ts) VALUES ($1, 'future', 0)`,
					storage.LatestSchemaVersion()+1); err != nil {
					t.Fatal(err)
				}
				if err := db.WaitForSchema(ctx); !errors.Is(err, storage.ErrSchemaTooNew) {
					t.Fatalf("WaitForSchema: %v, want ErrSchemaTooNew", err)
				}
			})
		})
	}
}

func TestNextStreamID(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		if cur, err := db.CurrentStreamSeq(ctx, "events"); err != nil || cur != 0 {
			t.Fatalf("CurrentStreamSeq before any allocation = %d, %v; want 0", cur, err)
		}
		var ids []int64
		for range 5 {
			err := db.Tx(ctx, func(tx *sql.Tx) error {
				id, err := db.NextStreamID(ctx, tx, "events")
				ids = append(ids, id)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		id, err := db.NextStreamID(ctx, nil, "events")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		if want := []int64{1, 2, 3, 4, 5, 6}; !slices.Equal(ids, want) {
			t.Fatalf("ids = %v, want %v", ids, want)
		}
		if cur, err := db.CurrentStreamSeq(ctx, "events"); err != nil || cur != 6 {
			t.Fatalf("CurrentStreamSeq = %d, %v; want 6", cur, err)
		}

		for _, bad := range []string{"", "Events", "events; DROP TABLE x", "no_such_stream"} {
			if _, err := db.NextStreamID(ctx, nil, bad); err == nil {
				t.Errorf("NextStreamID(%q) succeeded", bad)
			}
			if _, err := db.CurrentStreamSeq(ctx, bad); err == nil {
				t.Errorf("CurrentStreamSeq(%q) succeeded", bad)
			}
		}
	})
}

func TestNextStreamIDConcurrent(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		const workers, perWorker = 8, 25
		got := make([][]int64, workers)
		errs := make([]error, workers)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for range perWorker {
					err := db.Tx(ctx, func(tx *sql.Tx) error {
						id, err := db.NextStreamID(ctx, tx, "events")
						if err == nil {
							got[w] = append(got[w], id)
						}
						return err
					})
					if err != nil {
						errs[w] = err
						return
					}
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		var all []int64
		for w, ids := range got {
			if !slices.IsSorted(ids) {
				t.Errorf("worker %d saw ids out of order: %v", w, ids)
			}
			all = append(all, ids...)
		}
		slices.Sort(all)
		if len(slices.Compact(slices.Clone(all))) != workers*perWorker {
			t.Fatalf("got %d distinct ids of %d", len(slices.Compact(all)), workers*perWorker)
		}
		// Nothing rolled back, so on both engines the ids are exactly 1..N.
		if all[0] != 1 || all[len(all)-1] != workers*perWorker {
			t.Errorf("ids span %d..%d, want 1..%d", all[0], all[len(all)-1], workers*perWorker)
		}
	})
}

func countPositions(t *testing.T, db *storage.DB) int {
	t.Helper()
	var n int
	if err := db.Reader().QueryRowContext(testCtx(t), `SELECT COUNT(*) FROM stream_positions`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

const insertPosition = `INSERT INTO stream_positions (stream_name, instance_name, stream_id) VALUES ($1, $2, $3)`

func TestTxCommits(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		err := db.Tx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, insertPosition, "events", "master", 1)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if n := countPositions(t, db); n != 1 {
			t.Fatalf("%d rows after commit, want 1", n)
		}
	})
}

func TestTxRollsBackOnError(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		sentinel := errors.New("give up")
		calls := 0
		err := db.Tx(ctx, func(tx *sql.Tx) error {
			calls++
			if _, err := tx.ExecContext(ctx, insertPosition, "events", "master", 1); err != nil {
				return err
			}
			if _, err := db.NextStreamID(ctx, tx, "events"); err != nil {
				return err
			}
			return sentinel
		})
		if err != sentinel {
			t.Fatalf("Tx returned %v, want the callback's error unwrapped", err)
		}
		if calls != 1 {
			t.Errorf("callback ran %d times, want 1 (error is not retryable)", calls)
		}
		if n := countPositions(t, db); n != 0 {
			t.Fatalf("%d rows after rollback, want 0", n)
		}
		if db.Engine() == storage.SQLite {
			// The counter row rolled back with the transaction.
			if cur, err := db.CurrentStreamSeq(ctx, "events"); err != nil || cur != 0 {
				t.Errorf("CurrentStreamSeq after rollback = %d, %v; want 0", cur, err)
			}
		}
	})
}

func TestTxRollsBackAndRepanics(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		type boom struct{}
		func() {
			defer func() {
				if r := recover(); r != (boom{}) {
					t.Fatalf("recovered %v, want the callback's panic value", r)
				}
			}()
			_ = db.Tx(ctx, func(tx *sql.Tx) error {
				if _, err := tx.ExecContext(ctx, insertPosition, "events", "master", 1); err != nil {
					t.Error(err)
				}
				panic(boom{})
			})
			t.Fatal("Tx returned after the callback panicked")
		}()
		if n := countPositions(t, db); n != 0 {
			t.Fatalf("%d rows after panic, want 0", n)
		}
		// The connection went back to the pool: on SQLite a leaked writer
		// would block this forever (bounded by ctx).
		if _, err := db.Exec(ctx, insertPosition, "events", "master", 2); err != nil {
			t.Fatalf("write after panic: %v", err)
		}
	})
}

func TestTxRetriesTransientErrors(t *testing.T) {
	t.Parallel()
	serialization := &pgconn.PgError{Code: "40001", Message: "could not serialize access"}
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		calls := 0
		err := db.Tx(ctx, func(tx *sql.Tx) error {
			calls++
			if _, err := tx.ExecContext(ctx, insertPosition, "events", "master", 1); err != nil {
				return err
			}
			if calls < 3 {
				return fmt.Errorf("wrapped: %w", serialization)
			}
			return nil
		})
		if err != nil || calls != 3 {
			t.Fatalf("Tx = %v after %d calls, want success on the third", err, calls)
		}
		if n := countPositions(t, db); n != 1 {
			t.Fatalf("%d rows, want 1: failed attempts must roll back", n)
		}

		calls = 0
		err = db.Tx(ctx, func(tx *sql.Tx) error { calls++; return serialization })
		if !errors.Is(err, serialization) {
			t.Fatalf("Tx = %v, want the last serialization error", err)
		}
		if calls < 2 || calls > 10 {
			t.Fatalf("always-failing callback ran %d times, want a few", calls)
		}
	})
}

// A real deadlock: PostgreSQL aborts one side with 40P01 and Tx must retry
// it through database/sql's error wrapping.
func TestTxRetriesPostgresDeadlock(t *testing.T) {
	t.Parallel()
	db := storagetest.NewDB(t, storage.Postgres)
	ctx := testCtx(t)
	for _, inst := range []string{"a", "b"} {
		if _, err := db.Exec(ctx, insertPosition, "events", inst, 0); err != nil {
			t.Fatal(err)
		}
	}
	const bump = `UPDATE stream_positions SET stream_id = stream_id + 1 WHERE instance_name = $1`
	// Both transactions hold their first row lock before either asks for
	// the second, so they deadlock on the first attempt.
	var both sync.WaitGroup
	both.Add(2)
	attempts := make([]int, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, order := range [][2]string{{"a", "b"}, {"b", "a"}} {
		wg.Go(func() {
			errs[i] = db.Tx(ctx, func(tx *sql.Tx) error {
				attempts[i]++
				if _, err := tx.ExecContext(ctx, bump, order[0]); err != nil {
					return err
				}
				if attempts[i] == 1 {
					both.Done()
					both.Wait()
				}
				_, err := tx.ExecContext(ctx, bump, order[1])
				return err
			})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("deadlocked transactions: %v", err)
	}
	if attempts[0]+attempts[1] < 3 {
		t.Errorf("attempts = %v, want one side retried", attempts)
	}
	var sum int
	if err := db.Reader().QueryRowContext(ctx, `SELECT SUM(stream_id) FROM stream_positions`).Scan(&sum); err != nil || sum != 4 {
		t.Errorf("sum of positions = %d, %v; want 4 (each transaction applied once)", sum, err)
	}
}

func TestIsUniqueViolation(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := testCtx(t)
		if _, err := db.Exec(ctx, insertPosition, "events", "master", 1); err != nil {
			t.Fatal(err)
		}
		_, err := db.Exec(ctx, insertPosition, "events", "master", 2)
		if !storage.IsUniqueViolation(err) {
			t.Errorf("duplicate primary key: IsUniqueViolation(%v) = false", err)
		}
		if !storage.IsUniqueViolation(fmt.Errorf("persist: %w", err)) {
			t.Error("IsUniqueViolation does not see through wrapping")
		}

		// A UNIQUE constraint that is not the primary key.
		if _, err := db.Exec(ctx, `CREATE TABLE uniq_test (id INTEGER PRIMARY KEY, v TEXT UNIQUE)`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctx, `INSERT INTO uniq_test (id, v) VALUES (1, 'x')`); err != nil {
			t.Fatal(err)
		}
		_, err = db.Exec(ctx, `INSERT INTO uniq_test (id, v) VALUES (2, 'x')`)
		if !storage.IsUniqueViolation(err) {
			t.Errorf("duplicate unique column: IsUniqueViolation(%v) = false", err)
		}

		_, notNull := db.Exec(ctx, insertPosition, "events", "other", nil)
		_, syntax := db.Exec(ctx, `INSERT INTO nowhere VALUES (1)`)
		for _, err := range []error{nil, sql.ErrNoRows, syntax, notNull} {
			if storage.IsUniqueViolation(err) {
				t.Errorf("IsUniqueViolation(%v) = true", err)
			}
		}
	})
}

func TestIsNotFound(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		var id int64
		err := db.Reader().QueryRowContext(testCtx(t), `SELECT stream_id FROM stream_positions WHERE stream_name = $1`, "none").Scan(&id)
		if !storage.IsNotFound(err) || !storage.IsNotFound(fmt.Errorf("get: %w", err)) {
			t.Errorf("IsNotFound(%v) = false", err)
		}
		if storage.IsNotFound(nil) || storage.IsNotFound(errors.New("other")) {
			t.Error("IsNotFound is true for a non-ErrNoRows error")
		}
	})
}

func TestSQLiteReaders(t *testing.T) {
	t.Parallel()
	db := storagetest.NewDB(t, storage.SQLite)
	ctx := testCtx(t)

	t.Run("see committed writes", func(t *testing.T) {
		for i := range 20 {
			if _, err := db.Exec(ctx, insertPosition, "events", fmt.Sprint("w", i), i); err != nil {
				t.Fatal(err)
			}
			var got int
			err := db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM stream_positions WHERE instance_name = $1`, fmt.Sprint("w", i)).Scan(&got)
			if err != nil || got != i {
				t.Fatalf("reader after write %d: %d, %v", i, got, err)
			}
		}
	})

	t.Run("do not wait for an open write", func(t *testing.T) {
		err := db.Tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, insertPosition, "events", "uncommitted", 1); err != nil {
				return err
			}
			// The writer holds the write lock here; a reader that waited
			// for it would deadlock until ctx expired.
			var n int
			if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM stream_positions WHERE instance_name = 'uncommitted'`).Scan(&n); err != nil {
				return err
			}
			if n != 0 {
				t.Errorf("reader saw an uncommitted row")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("refuse writes", func(t *testing.T) {
		if _, err := db.Reader().ExecContext(ctx, insertPosition, "events", "via-reader", 1); err == nil {
			t.Fatal("write through Reader() succeeded")
		}
	})
}

func TestOpenSQLiteSettings(t *testing.T) {
	t.Parallel()
	// URI metacharacters in the path must not be taken for parameters.
	path := filepath.Join(t.TempDir(), "odd ?#%name.db")
	db, err := storage.Open(testCtx(t), storage.Options{Engine: storage.SQLite, DSN: path}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database file not at the given path: %v", err)
	}
	ctx := testCtx(t)
	for _, q := range []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "wal"},
		{"foreign_keys", "1"},
		{"synchronous", "1"}, // NORMAL
		{"busy_timeout", "10000"},
	} {
		var got string
		if err := db.Reader().QueryRowContext(ctx, "PRAGMA "+q.pragma).Scan(&got); err != nil || got != q.want {
			t.Errorf("reader PRAGMA %s = %q, %v; want %q", q.pragma, got, err, q.want)
		}
	}
}

// TestCommitUnknown: a COMMIT that failed without the database saying why
// (a lost connection) may have taken effect; one the database refused did
// not; other errors are not commit failures at all.
func TestCommitUnknown(t *testing.T) {
	lost := fmt.Errorf("commit transaction: %w: %w", storage.ErrCommit, io.ErrUnexpectedEOF)
	refused := fmt.Errorf("commit transaction: %w: %w", storage.ErrCommit, &pgconn.PgError{Code: "40001"})
	if !storage.CommitUnknown(lost) {
		t.Error("a commit lost with its connection is not reported unknown")
	}
	if storage.CommitUnknown(refused) {
		t.Error("a commit the database refused is reported unknown")
	}
	if storage.CommitUnknown(io.ErrUnexpectedEOF) || storage.CommitUnknown(nil) {
		t.Error("an error outside COMMIT is reported as an unknown commit")
	}
}

func TestAppendIn(t *testing.T) {
	args, in := storage.AppendIn([]any{"x"}, []string{"a", "b", "c"})
	if in != "$2,$3,$4" || len(args) != 4 || args[0] != "x" || args[3] != "c" {
		t.Fatalf("AppendIn: %q %v", in, args)
	}
	if args, in = storage.AppendIn(nil, []string{"only"}); in != "$1" || len(args) != 1 {
		t.Fatalf("AppendIn: %q %v", in, args)
	}
}
