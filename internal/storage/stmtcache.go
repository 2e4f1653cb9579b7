package storage

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"
)

// stmtCache is a Querier that prepares each distinct query once and reuses
// the statement. On SQLite, parsing and planning a statement costs more
// than running the small indexed queries Ganglion issues (a profile of
// /sync fan-out showed most CPU in the SQL parser); *sql.Stmt keeps one
// prepared statement per pooled connection. PostgreSQL does not need it:
// pgx caches prepared statements per connection itself.
type stmtCache struct {
	db    *sql.DB
	stmts sync.Map // query → *sql.Stmt
	n     atomic.Int64
	max   int64
}

var _ Querier = (*stmtCache)(nil)

func newStmtCache(db *sql.DB, max int64) *stmtCache { return &stmtCache{db: db, max: max} }

// stmt returns the cached statement, preparing it on first use. Queries
// built with a variable number of placeholders make many distinct texts;
// past max entries new texts run unprepared rather than grow the cache.
func (c *stmtCache) stmt(ctx context.Context, query string) *sql.Stmt {
	if s, ok := c.stmts.Load(query); ok {
		return s.(*sql.Stmt)
	}
	if c.n.Load() >= c.max {
		return nil
	}
	s, err := c.db.PrepareContext(ctx, query)
	if err != nil {
		return nil // run it unprepared: the error surfaces there
	}
	if actual, loaded := c.stmts.LoadOrStore(query, s); loaded {
		_ = s.Close()
		return actual.(*sql.Stmt)
	}
	c.n.Add(1)
	return s
}

func (c *stmtCache) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if s := c.stmt(ctx, query); s != nil {
		return s.ExecContext(ctx, args...)
	}
	return c.db.ExecContext(ctx, query, args...)
}

func (c *stmtCache) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s := c.stmt(ctx, query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return c.db.QueryContext(ctx, query, args...)
}

func (c *stmtCache) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if s := c.stmt(ctx, query); s != nil {
		return s.QueryRowContext(ctx, args...)
	}
	return c.db.QueryRowContext(ctx, query, args...)
}

func (c *stmtCache) close() {
	c.stmts.Range(func(_, v any) bool {
		_ = v.(*sql.Stmt).Close()
		return true
	})
}
