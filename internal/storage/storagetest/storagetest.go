// Package storagetest gives each test its own fresh database on both
// engines. PostgreSQL comes from the server named by GANGLION_TEST_POSTGRES
// (scripts/test starts one); each test creates and drops its own database
// there, so tests and packages can run in parallel.
package storagetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver for the admin connection

	"ganglion/internal/storage"
)

// Environment variables read by this package.
const (
	// EnvPostgres is a postgres:// URL of a database on a server where the
	// user may CREATE DATABASE (normally the "postgres" database).
	EnvPostgres = "GANGLION_TEST_POSTGRES"
	// EnvRequirePostgres, like CI, turns a missing EnvPostgres into a test
	// failure: in CI a skipped engine is a hole, not a convenience.
	EnvRequirePostgres = "GANGLION_REQUIRE_POSTGRES"
)

// adminTimeout bounds CREATE/DROP DATABASE so a wedged server fails the test
// instead of hanging it until the go test timeout.
const adminTimeout = 60 * time.Second

// Engines lists the engines every store suite runs on, in subtest order.
func Engines() []storage.Engine { return []storage.Engine{storage.SQLite, storage.Postgres} }

// ForEachEngine runs fn as the subtests "sqlite" and "postgres", each with a
// fresh, migrated database that is closed (and on PostgreSQL dropped) when
// the subtest ends.
func ForEachEngine(t *testing.T, fn func(t *testing.T, db *storage.DB)) {
	t.Helper()
	for _, e := range Engines() {
		t.Run(string(e), func(t *testing.T) {
			fn(t, NewDB(t, e))
		})
	}
}

// NewDB opens a fresh database on engine and migrates it to the latest
// schema. On PostgreSQL it skips (or, in CI, fails) the test when no server
// is configured.
func NewDB(t testing.TB, engine storage.Engine) *storage.DB {
	t.Helper()
	db := NewEmptyDB(t, engine)
	ctx, cancel := context.WithTimeout(t.Context(), adminTimeout)
	defer cancel()
	if err := db.Migrate(ctx); err != nil {
		t.Fatalf("migrate %s test database: %v", engine, err)
	}
	return db
}

// NewEmptyDB is NewDB without migrating: for tests of migrations and of
// waiting for the schema.
func NewEmptyDB(t testing.TB, engine storage.Engine) *storage.DB {
	t.Helper()
	var opts storage.Options
	switch engine {
	case storage.SQLite:
		opts = storage.Options{Engine: storage.SQLite, DSN: filepath.Join(t.TempDir(), "ganglion.db")}
	case storage.Postgres:
		opts = storage.Options{Engine: storage.Postgres, DSN: NewPostgresDatabase(t)}
	default:
		t.Fatalf("unknown engine %q", engine)
	}
	ctx, cancel := context.WithTimeout(t.Context(), adminTimeout)
	defer cancel()
	db, err := storage.Open(ctx, opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open %s test database: %v", engine, err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close %s test database: %v", engine, err)
		}
	})
	return db
}

// PostgresAdminURL returns GANGLION_TEST_POSTGRES. When it is unset it skips
// the test, or fails it if CI or GANGLION_REQUIRE_POSTGRES is set.
func PostgresAdminURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvPostgres)
	if u != "" {
		return u
	}
	msg := EnvPostgres + " is not set: no PostgreSQL server to test against (scripts/test starts one)"
	if os.Getenv("CI") != "" || os.Getenv(EnvRequirePostgres) != "" {
		t.Fatal(msg + "; CI / " + EnvRequirePostgres + " requires PostgreSQL")
	}
	t.Skip(msg)
	return ""
}

// NewPostgresDatabase creates an empty database on the test server and
// returns its URL; it is dropped when the test ends, even if connections to
// it are still open (a server process under test that was not stopped).
func NewPostgresDatabase(t testing.TB) string {
	t.Helper()
	admin := PostgresAdminURL(t)
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("%s must be a postgres:// URL, got %q", EnvPostgres, admin)
	}
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	name := "ganglion_test_" + hex.EncodeToString(b[:])

	// The name is generated above, so quoting it as an identifier is safe.
	if err := adminExec(t.Context(), admin, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("create test database %s: %v", name, err)
	}
	t.Cleanup(func() {
		// The test's context is already cancelled when cleanups run.
		if err := adminExec(context.WithoutCancel(t.Context()), admin, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}

// adminExec runs one statement on a short-lived connection: CREATE and DROP
// DATABASE cannot run in a transaction, and holding an admin pool per test
// would eat into the server's connection limit.
func adminExec(ctx context.Context, adminURL, stmt string) error {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	db, err := sql.Open("pgx", adminURL)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		return fmt.Errorf("%s: %w", stmt, err)
	}
	return nil
}
