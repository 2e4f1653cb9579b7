// Package storage owns the database connection for a process: opening
// PostgreSQL or SQLite, running transactions with retry, applying the embedded
// migrations and allocating stream ids. Domain packages own their tables and
// queries; they reach the database only through *DB, Querier and *sql.Tx.
//
// SQL is written once with $N placeholders and shared by both engines;
// modernc.org/sqlite accepts $N (also out of order) and RETURNING.
package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Engine names a database engine.
type Engine string

const (
	Postgres Engine = "postgres"
	SQLite   Engine = "sqlite"
)

const (
	defaultPostgresConns = 10
	// SQLite readers only contend on CPU and page cache, not locks (WAL), so a
	// handful is enough for the monolith demo.
	defaultSQLiteReaders = 4
	sqliteBusyTimeout    = 10 * time.Second

	txAttempts   = 5
	txBackoffMin = 5 * time.Millisecond
)

// Options says which database to open.
type Options struct {
	Engine Engine
	// DSN is a postgres:// URL for PostgreSQL, or a file path for SQLite.
	DSN string
	// MaxConns bounds the PostgreSQL pool, or the SQLite reader pool (SQLite
	// always has exactly one writer connection). Zero means the default.
	MaxConns int
}

// Querier is what both *sql.DB and *sql.Tx offer, so store methods can run
// either inside a caller's transaction or on their own.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

var (
	_ Querier = (*sql.DB)(nil)
	_ Querier = (*sql.Tx)(nil)
)

// DB is an open database. On PostgreSQL the writer and reader are the same
// pool. On SQLite the writer is a single connection, so every write and every
// transaction in this process is serialised in Go rather than by SQLite's file
// lock (no SQLITE_BUSY storms), while readers use their own pool and, thanks
// to WAL, never wait for the writer.
type DB struct {
	engine Engine
	writer *sql.DB
	reader *sql.DB
	log    *slog.Logger
	// readStmts prepares reader queries once (SQLite only; see stmtCache).
	readStmts *stmtCache
	// observeTx, if set, hears of every transaction (see SetTxObserver);
	// names caches the names of Tx call sites.
	observeTx TxObserver
	spanTx    TxSpan
	names     txNames
}

// Open connects to the database and checks that it answers. It does not
// migrate; the main process calls Migrate, workers call WaitForSchema.
func Open(ctx context.Context, opts Options, log *slog.Logger) (*DB, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch opts.Engine {
	case Postgres:
		return openPostgres(ctx, opts, log)
	case SQLite:
		return openSQLite(ctx, opts, log)
	default:
		return nil, fmt.Errorf("open database: unknown engine %q (want %q or %q)", opts.Engine, Postgres, SQLite)
	}
}

func openPostgres(ctx context.Context, opts Options, log *slog.Logger) (*DB, error) {
	cfg, err := pgx.ParseConfig(opts.DSN)
	if err != nil {
		return nil, fmt.Errorf("open postgres: parse dsn: %w", err)
	}
	pool := stdlib.OpenDB(*cfg)
	n := opts.MaxConns
	if n <= 0 {
		n = defaultPostgresConns
	}
	pool.SetMaxOpenConns(n)
	pool.SetMaxIdleConns(n)
	pool.SetConnMaxIdleTime(5 * time.Minute)
	if err := pool.PingContext(ctx); err != nil {
		_ = pool.Close()
		return nil, fmt.Errorf("open postgres %s@%s:%d/%s: %w", cfg.User, cfg.Host, cfg.Port, cfg.Database, err)
	}
	log.Debug("opened database", "engine", Postgres, "host", cfg.Host, "database", cfg.Database, "max_conns", n)
	return &DB{engine: Postgres, writer: pool, reader: pool, log: log}, nil
}

func openSQLite(ctx context.Context, opts Options, log *slog.Logger) (*DB, error) {
	path := opts.DSN
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		// The writer and the readers are separate connections, so they
		// must all name the same on-disk file; an in-memory database would
		// be private to each connection.
		return nil, fmt.Errorf("open sqlite: DSN must be a file path, got %q", path)
	}
	// Pragmas go in the DSN so the driver applies them to every new
	// connection, including ones the pool opens later.
	common := url.Values{}
	common.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqliteBusyTimeout.Milliseconds()))
	common.Add("_pragma", "foreign_keys(1)")
	common.Add("_pragma", "synchronous(NORMAL)")

	wq := cloneValues(common)
	wq.Add("_pragma", "journal_mode(WAL)")
	// BEGIN IMMEDIATE takes the write lock up front: a transaction that
	// reads then writes can then never fail half-way with SQLITE_BUSY
	// because another process wrote in between.
	wq.Set("_txlock", "immediate")
	writer, err := sql.Open("sqlite", sqliteURI(path, wq))
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxLifetime(0)
	writer.SetConnMaxIdleTime(0)
	// The writer connects first so journal_mode=WAL (a property of the file)
	// is in place before any reader opens it.
	if err := writer.PingContext(ctx); err != nil {
		_ = writer.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}

	rq := cloneValues(common)
	// Readers refuse writes, so a write sent to Reader() by mistake fails
	// loudly instead of quietly competing with the writer for the lock.
	rq.Add("_pragma", "query_only(1)")
	reader, err := sql.Open("sqlite", sqliteURI(path, rq))
	if err != nil {
		_ = writer.Close()
		return nil, fmt.Errorf("open sqlite %s readers: %w", path, err)
	}
	n := opts.MaxConns
	if n <= 0 {
		n = defaultSQLiteReaders
	}
	reader.SetMaxOpenConns(n)
	reader.SetMaxIdleConns(n)
	if err := reader.PingContext(ctx); err != nil {
		_ = reader.Close()
		_ = writer.Close()
		return nil, fmt.Errorf("open sqlite %s readers: %w", path, err)
	}
	log.Debug("opened database", "engine", SQLite, "path", path, "readers", n)
	return &DB{engine: SQLite, writer: writer, reader: reader, log: log, readStmts: newStmtCache(reader, 512)}, nil
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// sqliteURI builds a file: URI; the path is escaped so names containing '?'
// or '#' are not mistaken for query parameters.
func sqliteURI(path string, q url.Values) string {
	u := url.URL{Scheme: "file", Opaque: (&url.URL{Path: path}).EscapedPath(), RawQuery: q.Encode()}
	return u.String()
}

// Engine reports which engine this database runs on.
func (db *DB) Engine() Engine { return db.engine }

// Close closes all connections.
func (db *DB) Close() error {
	if db.readStmts != nil {
		db.readStmts.close()
	}
	if db.reader == db.writer {
		return db.writer.Close()
	}
	return errors.Join(db.reader.Close(), db.writer.Close())
}

// Reader is for reads outside a transaction. On SQLite it is a read-only
// pool that sees every committed write and never waits for the writer.
func (db *DB) Reader() Querier {
	if db.readStmts != nil {
		return db.readStmts
	}
	return db.reader
}

// Exec runs one statement on the writer, outside any transaction.
//
// On SQLite the writer is a single connection: calling Exec (or Tx) from
// inside a Tx callback deadlocks. Use the callback's tx instead.
func (db *DB) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return db.writer.ExecContext(ctx, query, args...)
}

// Tx runs fn in a transaction on the writer and commits if fn returns nil.
// If fn returns an error or panics, the transaction is rolled back (and the
// panic continues). On a PostgreSQL serialization failure or deadlock, or
// SQLite BUSY/LOCKED, the whole of fn is retried a few times with a short
// jittered backoff, so fn must have no effects outside tx that would be
// wrong to repeat. The error from fn is returned unwrapped so callers can
// match their own sentinel errors.
func (db *DB) Tx(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	if db.observeTx != nil || db.spanTx != nil {
		name, start := db.txName(ctx, 2), time.Now()
		var end func(error)
		if db.spanTx != nil {
			end = db.spanTx(ctx, name)
		}
		defer func() {
			if db.observeTx != nil {
				db.observeTx(name, time.Since(start), err)
			}
			if end != nil {
				end(err)
			}
		}()
	}
	backoff := txBackoffMin
	for attempt := 1; ; attempt++ {
		err := db.txOnce(ctx, fn)
		if err == nil || attempt == txAttempts || !isRetryable(err) || ctx.Err() != nil {
			return err
		}
		db.log.Debug("retrying transaction", "attempt", attempt, "err", err)
		// Full jitter keeps colliding transactions from colliding again.
		wait := time.Duration(rand.Int64N(int64(backoff))) + time.Millisecond
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff *= 2
	}
}

func (db *DB) txOnce(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	tx, err := db.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		// Runs on error and while a panic unwinds; the panic then
		// continues to the caller untouched.
		if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
			db.log.Warn("rollback failed", "err", rbErr)
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit transaction: %w: %w", ErrCommit, err)
	}
	committed = true
	return nil
}

// ErrCommit marks a transaction whose COMMIT failed: unless the database
// said why (a serialization failure, a constraint), the connection may have
// died after the commit took effect, so the caller cannot assume it did not.
var ErrCommit = errors.New("commit failed")

// CommitUnknown reports whether err is a failed COMMIT whose outcome is
// unknown: the database gave no reason (a lost connection), so the
// transaction may have committed.
func CommitUnknown(err error) bool {
	if !errors.Is(err, ErrCommit) {
		return false
	}
	var pgErr *pgconn.PgError
	var sqlErr *sqlite.Error
	return !errors.As(err, &pgErr) && !errors.As(err, &sqlErr)
}

func isRetryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// 40001 serialization_failure, 40P01 deadlock_detected.
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	var sqlErr *sqlite.Error
	if errors.As(err, &sqlErr) {
		// Extended result codes are on; the low byte is the primary code.
		switch sqlErr.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return true
		}
	}
	return false
}

// IsUniqueViolation reports whether err is a unique or primary key
// constraint violation on either engine.
func IsUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	var sqlErr *sqlite.Error
	if errors.As(err, &sqlErr) {
		switch sqlErr.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return true
		}
	}
	return false
}

// IsNotFound reports whether err means a single-row query found no row.
func IsNotFound(err error) bool { return errors.Is(err, sql.ErrNoRows) }
