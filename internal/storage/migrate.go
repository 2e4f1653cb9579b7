package storage

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
	"time"
)

// migrationFiles is the only source of schema. It is read-only.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

const migrationsDir = "migrations"

// schemaPollInterval is how often WaitForSchema re-reads the schema version.
const schemaPollInterval = 500 * time.Millisecond

// migrationLockKey is the pg_advisory_xact_lock key that serialises
// migrations across processes ("gangmigr" as an integer); arbitrary but fixed.
const migrationLockKey int64 = 0x67616e676d696772

// NNNN_name.sql is shared; NNNN_name.postgres.sql / NNNN_name.sqlite.sql
// replace the shared file for that engine.
var migrationName = regexp.MustCompile(`^([0-9]{4})_([a-z0-9_]+?)(?:\.(postgres|sqlite))?\.sql$`)

// migration is one schema step as it applies to one engine.
type migration struct {
	Version int
	Name    string // without number and extension, e.g. "streams"
	File    string // the file chosen for the engine
	SQL     string
}

// parseMigrations reads the migrations in fsys (files directly under dir)
// and returns, in version order, the file each version uses on engine. It
// checks every engine, not just the one asked for, so a version that only
// has a variant for one engine is caught by tests run on the other. Versions
// must start at 1 and have no gaps: a gap or duplicate number almost always
// means two branches picked the same number.
func parseMigrations(fsys fs.FS, dir string, engine Engine) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	type files struct {
		name                     string
		shared                   string
		postgresFile, sqliteFile string
	}
	byVersion := map[int]*files{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration %s: name must be NNNN_name.sql, NNNN_name.postgres.sql or NNNN_name.sqlite.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		if v == 0 {
			return nil, fmt.Errorf("migration %s: versions start at 0001", e.Name())
		}
		f := byVersion[v]
		if f == nil {
			f = &files{name: m[2]}
			byVersion[v] = f
		} else if f.name != m[2] {
			return nil, fmt.Errorf("migration version %04d is used by two names, %q and %q", v, f.name, m[2])
		}
		switch Engine(m[3]) {
		case "":
			f.shared = e.Name()
		case Postgres:
			f.postgresFile = e.Name()
		case SQLite:
			f.sqliteFile = e.Name()
		}
	}

	versions := make([]int, 0, len(byVersion))
	for v := range byVersion {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	out := make([]migration, 0, len(versions))
	for i, v := range versions {
		if v != i+1 {
			return nil, fmt.Errorf("migration versions must be contiguous from 0001: %04d is missing", i+1)
		}
		f := byVersion[v]
		pick := map[Engine]string{Postgres: f.shared, SQLite: f.shared}
		if f.postgresFile != "" {
			pick[Postgres] = f.postgresFile
		}
		if f.sqliteFile != "" {
			pick[SQLite] = f.sqliteFile
		}
		for _, e := range []Engine{Postgres, SQLite} {
			if pick[e] == "" {
				return nil, fmt.Errorf("migration %04d_%s has no file for %s (add %04d_%s.sql or %04d_%s.%s.sql)",
					v, f.name, e, v, f.name, v, f.name, e)
			}
		}
		file, ok := pick[engine]
		if !ok {
			return nil, fmt.Errorf("read migrations: unknown engine %q", engine)
		}
		body, err := fs.ReadFile(fsys, path.Join(dir, file))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", file, err)
		}
		out = append(out, migration{Version: v, Name: f.name, File: file, SQL: string(body)})
	}
	return out, nil
}

// LatestSchemaVersion is the schema version this binary expects: the
// highest embedded migration.
func LatestSchemaVersion() int {
	entries, err := fs.ReadDir(migrationFiles, migrationsDir)
	if err != nil {
		return 0
	}
	latest := 0
	for _, e := range entries {
		if m := migrationName.FindStringSubmatch(e.Name()); m != nil {
			v, _ := strconv.Atoi(m[1])
			latest = max(latest, v)
		}
	}
	return latest
}

// Migrate brings the schema up to LatestSchemaVersion. Only the main process
// calls it. Each migration runs in its own transaction together with its
// schema_migrations row, so a failed migration leaves the previous version
// intact. On PostgreSQL every step holds an advisory lock, so processes
// migrating at the same time apply each step exactly once; on SQLite the
// writer's BEGIN IMMEDIATE does the same.
//
// Migrations run inside a transaction, so they cannot use statements that
// refuse one (CREATE INDEX CONCURRENTLY, VACUUM).
func (db *DB) Migrate(ctx context.Context) error {
	return db.migrate(ctx, migrationFiles, migrationsDir)
}

func (db *DB) migrate(ctx context.Context, fsys fs.FS, dir string) error {
	migs, err := parseMigrations(fsys, dir, db.engine)
	if err != nil {
		return err
	}
	for {
		applied, err := db.applyNext(ctx, migs)
		if err != nil {
			return err
		}
		if applied == nil {
			return nil
		}
		db.log.Info("applied migration", "version", applied.Version, "name", applied.Name, "file", applied.File)
	}
}

// applyNext applies the first migration the database does not have yet, or
// returns nil if there is none. The version is read under the lock, so a
// concurrent migrator that got there first is seen.
func (db *DB) applyNext(ctx context.Context, migs []migration) (*migration, error) {
	var applied *migration
	err := db.Tx(ctx, func(tx *sql.Tx) error {
		applied = nil
		if db.engine == Postgres {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLockKey); err != nil {
				return fmt.Errorf("lock for migration: %w", err)
			}
		}
		// The bootstrap table is the one schema not in a migration file:
		// it has to exist before we can know which files to apply.
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version INTEGER PRIMARY KEY,
			name TEXT NOT NULL,
			applied_ts BIGINT NOT NULL
		)`); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		current, err := checkApplied(ctx, tx, migs)
		if err != nil {
			return err
		}
		if current >= len(migs) {
			return nil
		}
		m := migs[current]
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			return fmt.Errorf("apply migration %s: %w", m.File, err)
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO schema_migrations (version, name, applied_ts) VALUES ($1, $2, $3)`,
			m.Version, m.Name, time.Now().UnixMilli()); err != nil {
			return fmt.Errorf("record migration %s: %w", m.File, err)
		}
		applied = &m
		return nil
	})
	return applied, err
}

// checkApplied returns the database's schema version after checking that the
// applied migrations are the ones this binary has: a database migrated by a
// newer binary, or a number reused for a different migration, must stop the
// process rather than run queries against a schema it does not understand.
func checkApplied(ctx context.Context, q Querier, migs []migration) (int, error) {
	rows, err := q.QueryContext(ctx, `SELECT version, name FROM schema_migrations ORDER BY version`)
	if err != nil {
		return 0, fmt.Errorf("read schema_migrations: %w", err)
	}
	defer rows.Close()
	current := 0
	for rows.Next() {
		var v int
		var name string
		if err := rows.Scan(&v, &name); err != nil {
			return 0, fmt.Errorf("read schema_migrations: %w", err)
		}
		if v > len(migs) {
			return 0, fmt.Errorf("%w: database is at version %d, this binary knows %d", ErrSchemaTooNew, v, len(migs))
		}
		if want := migs[v-1].Name; name != want {
			return 0, fmt.Errorf("database has migration %04d_%s but this binary's %04d is %s", v, name, v, want)
		}
		if v != current+1 {
			return 0, fmt.Errorf("schema_migrations is missing version %d", current+1)
		}
		current = v
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("read schema_migrations: %w", err)
	}
	return current, nil
}

// SchemaVersion is the highest applied migration, 0 for an empty database.
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	var exists bool
	var err error
	switch db.engine {
	case Postgres:
		err = db.reader.QueryRowContext(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists)
	default:
		err = db.reader.QueryRowContext(ctx,
			`SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations')`).Scan(&exists)
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	if err := db.reader.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// ErrSchemaTooNew is returned by WaitForSchema when the database was migrated
// by a newer binary than this one.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary")

// WaitForSchema blocks until the main process has migrated the database to
// LatestSchemaVersion, so a worker never queries tables that do not exist
// yet. Errors reading the version (the database still starting) are retried;
// it gives up when ctx ends, returning ctx's error.
func (db *DB) WaitForSchema(ctx context.Context) error {
	want := LatestSchemaVersion()
	ticker := time.NewTicker(schemaPollInterval)
	defer ticker.Stop()
	logged := false
	for {
		got, err := db.SchemaVersion(ctx)
		switch {
		case err == nil && got == want:
			return nil
		case err == nil && got > want:
			return fmt.Errorf("%w: database is at %d, binary knows %d", ErrSchemaTooNew, got, want)
		case !logged:
			db.log.Info("waiting for the main process to migrate the database", "have", got, "want", want, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for schema version %d (database at %d): %w", want, got, ctx.Err())
		case <-ticker.C:
		}
	}
}
