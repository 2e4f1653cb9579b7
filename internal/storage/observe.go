package storage

import (
	"context"
	"database/sql"
	"runtime"
	"strings"
	"sync"
	"time"
)

// TxObserver hears of every Tx call once it returns (retries included):
// the transaction's name, how long it took, and its error.
type TxObserver func(name string, took time.Duration, err error)

// TxSpan starts a span for a transaction about to begin (named as for
// TxObserver) and returns what ends it with the transaction's error.
type TxSpan func(ctx context.Context, name string) (end func(err error))

// SetTxSpan installs the tracing hook, like SetTxObserver.
func (db *DB) SetTxSpan(s TxSpan) { db.spanTx = s }

// SetTxObserver installs the observer. Call it before the database is
// used concurrently (the process sets it right after Open).
func (db *DB) SetTxObserver(o TxObserver) { db.observeTx = o }

// Pools are the connection pools, by role ("writer" and "reader" on SQLite,
// one "pool" on PostgreSQL, where both are the same), for pool metrics.
func (db *DB) Pools() map[string]*sql.DB {
	if db.reader == db.writer {
		return map[string]*sql.DB{"pool": db.writer}
	}
	return map[string]*sql.DB{"writer": db.writer, "reader": db.reader}
}

type txNameKey struct{}

// WithTxName names the transactions run with ctx (for metrics and traces).
// Without it a transaction is named after the function that called Tx.
func WithTxName(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, txNameKey{}, name)
}

// txNames caches the name of each Tx call site by program counter, so
// naming a transaction after its caller costs one runtime.Callers and a
// map read, not a symbol lookup.
type txNames struct{ m sync.Map } // uintptr → string

// txName names the transaction: the context's name, or the caller of Tx
// (skip frames above txName).
func (db *DB) txName(ctx context.Context, skip int) string {
	if n, ok := ctx.Value(txNameKey{}).(string); ok {
		return n
	}
	var pcs [1]uintptr
	if runtime.Callers(skip+1, pcs[:]) == 0 {
		return "unknown"
	}
	if n, ok := db.names.m.Load(pcs[0]); ok {
		return n.(string)
	}
	fr, _ := runtime.CallersFrames(pcs[:]).Next()
	n := shortFuncName(fr.Function)
	db.names.m.Store(pcs[0], n)
	return n
}

// shortFuncName turns "ganglion/internal/rooms.(*Persister).persistTogether.func1"
// into "rooms.Persister.persistTogether": the package and function, without
// the module path, pointer marks and closure suffixes.
func shortFuncName(f string) string {
	if i := strings.LastIndexByte(f, '/'); i >= 0 {
		f = f[i+1:]
	}
	f = strings.NewReplacer("(*", "", ")", "").Replace(f)
	for {
		i := strings.LastIndexByte(f, '.')
		if i < 0 || !isClosureSuffix(f[i+1:]) {
			break
		}
		f = f[:i]
	}
	if f == "" {
		return "unknown"
	}
	return f
}

// isClosureSuffix matches the "func1" and "1" parts of closure names.
func isClosureSuffix(s string) bool {
	s = strings.TrimPrefix(s, "func")
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
