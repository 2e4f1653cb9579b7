// Package caches owns the caches stream: a process that changes data which
// other processes may hold in memory publishes an invalidation naming the
// cache and keys, and every process drops those entries. Any process may
// write the stream; each writes its own rows.
package caches

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"ganglion/internal/replication"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Invalidator writes invalidations and applies everyone's.
type Invalidator struct {
	db  *storage.DB
	tw  *streams.TableWriter
	log *slog.Logger
	now func() time.Time

	mu        sync.Mutex
	handlers  map[string]func(keys []string) // cache name → drop keys (nil = all)
	broadcast func(ctx context.Context, name string, keys []string)
}

// New starts this process's writer of the caches stream.
func New(ctx context.Context, db *storage.DB, reg *streams.Registry, log *slog.Logger) (*Invalidator, error) {
	tw, err := streams.NewTableWriter(ctx, db, reg, streams.Caches, "cache_invalidations", "stream_id", "instance_name")
	if err != nil {
		return nil, err
	}
	return &Invalidator{db: db, tw: tw, log: log, now: time.Now, handlers: map[string]func([]string){}}, nil
}

// Register names a cache and how to drop its entries. keys nil means drop
// everything.
func (v *Invalidator) Register(name string, drop func(keys []string)) {
	v.mu.Lock()
	v.handlers[name] = drop
	v.mu.Unlock()
}

func (v *Invalidator) drop(name string, keys []string) {
	v.mu.Lock()
	h := v.handlers[name]
	v.mu.Unlock()
	if h != nil {
		h(keys)
	}
}

// Invalidate drops keys of the cache here and, through the stream, in
// every other process. Call it after the change it covers has committed.
//
// The stream alone leaves a window of a few milliseconds in which another
// worker still serves the old entry (Synapse #14210). For the caches we
// keep that window matters (a revoked access token must not work on the
// next request to another worker), so when a broadcast is wired the
// invalidation is also pushed over HTTP replication to every instance it
// can reach before Invalidate returns; the stream then covers the rest.
func (v *Invalidator) Invalidate(ctx context.Context, name string, keys []string) error {
	v.drop(name, keys)
	var keysJSON sql.NullString
	if keys != nil {
		b, err := json.Marshal(keys)
		if err != nil {
			return err
		}
		keysJSON = sql.NullString{String: string(b), Valid: true}
	}
	_, err := v.tw.Write(ctx, func(tx *sql.Tx, id int64) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO cache_invalidations (stream_id, instance_name, cache_func, keys, invalidation_ts)
			VALUES ($1, $2, $3, $4, $5)`, id, v.tw.Instance(), name, keysJSON, v.now().UnixMilli())
		return err
	})
	if err != nil {
		return fmt.Errorf("publish invalidation of %s: %w", name, err)
	}
	if v.broadcast != nil {
		v.broadcast(ctx, name, keys)
	}
	return nil
}

// SetBroadcast wires the synchronous push to other instances.
func (v *Invalidator) SetBroadcast(f func(ctx context.Context, name string, keys []string)) {
	v.broadcast = f
}

// InvalidateEndpoint applies an invalidation pushed by another instance.
var InvalidateEndpoint = replication.Endpoint{Name: "invalidate_cache", PathArgs: []string{"cache"}}

type invalidateBody struct {
	Keys []string `json:"keys"`
}

// Serve registers the endpoint on this instance's replication server.
func (v *Invalidator) Serve(srv *replication.Server) {
	e := InvalidateEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var b invalidateBody
		if err := json.Unmarshal(req.Body, &b); err != nil {
			return nil, fmt.Errorf("invalidate_cache: %w", err)
		}
		v.drop(req.Args["cache"], b.Keys)
		return struct{}{}, nil
	}
	srv.Register(e)
}

// Broadcaster pushes invalidations to the given instances in parallel,
// each bounded by timeout; an unreachable instance is left to the stream.
func Broadcaster(client *replication.Client, instances []string, timeout time.Duration, log *slog.Logger) func(ctx context.Context, name string, keys []string) {
	return func(ctx context.Context, name string, keys []string) {
		var wg sync.WaitGroup
		for _, inst := range instances {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(ctx, timeout)
				defer cancel()
				err := client.Call(cctx, inst, InvalidateEndpoint, map[string]string{"cache": name}, invalidateBody{Keys: keys}, nil,
					replication.WithBudget(timeout), replication.WithStreamPositions())
				if err != nil {
					log.Debug("cache invalidation push failed; the caches stream will deliver it", "instance", inst, "cache", name, "err", err)
				}
			}()
		}
		wg.Wait()
	}
}

// Position is this process's position on the stream.
func (v *Invalidator) Position() int64 { return v.tw.Position() }

// SavePosition records it.
func (v *Invalidator) SavePosition(ctx context.Context) error { return v.tw.SavePosition(ctx) }

var _ streams.Source = (*Invalidator)(nil)

// Rows implements streams.Source: Synapse's [cache_func, keys|null, ts].
func (v *Invalidator) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	rows, err := v.db.Reader().QueryContext(ctx, `SELECT stream_id, cache_func, keys, invalidation_ts FROM cache_invalidations
		WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id LIMIT $4`, writer, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read cache invalidations of %s: %w", writer, err)
	}
	defer rows.Close()
	var out []streams.Row
	for rows.Next() {
		var id, ts int64
		var name string
		var keys sql.NullString
		if err := rows.Scan(&id, &name, &keys, &ts); err != nil {
			return nil, fmt.Errorf("read cache invalidations: %w", err)
		}
		var k any
		if keys.Valid {
			k = json.RawMessage(keys.String)
		}
		b, _ := json.Marshal([]any{name, k, ts})
		out = append(out, streams.Row{Token: id, Data: b})
	}
	return out, rows.Err()
}

// Apply implements streams.Source: drop the named entries here.
func (v *Invalidator) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var f []json.RawMessage
	if json.Unmarshal(row.Data, &f) != nil || len(f) < 2 {
		return nil
	}
	var name string
	var keys []string
	_ = json.Unmarshal(f[0], &name)
	if string(f[1]) != "null" {
		if json.Unmarshal(f[1], &keys) != nil {
			return nil
		}
	}
	v.drop(name, keys)
	return nil
}
