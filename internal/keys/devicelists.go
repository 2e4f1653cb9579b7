package keys

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Update is one change of a user's device list, applied by the device_lists
// writer in one transaction together with the stream row announcing it: a
// change is never stored without its announcement, and a retried update
// announces again (harmless: clients re-query).
type Update struct {
	UserID string `json:"user_id"`
	// DeviceIDs are the devices whose entry changed (created, renamed, new
	// keys, deleted). "" stands for the user's cross-signing keys.
	DeviceIDs []string `json:"device_ids"`
	// DeviceKeys are device keys to store, by device id (canonical JSON).
	DeviceKeys map[string]json.RawMessage `json:"device_keys,omitempty"`
	// Deleted devices lose their keys.
	Deleted bool `json:"deleted,omitempty"`
	// CrossSigningKeys are the user's cross-signing keys to store, by key
	// type (master, self_signing, user_signing); they announce "".
	CrossSigningKeys map[string]json.RawMessage `json:"cross_signing_keys,omitempty"`
	// Signatures to store (the caller names the devices they announce).
	Signatures []Signature `json:"signatures,omitempty"`
	// DeleteCrossSigning deletes the user's cross-signing keys and every
	// signature of or by the user (deactivation); it announces "".
	DeleteCrossSigning bool `json:"delete_cross_signing,omitempty"`
	// Drain announces, with the rest, the user's changes waiting in
	// device_lists_outbox, deleting them in the same transaction: a
	// drained change is announced exactly once, however many processes
	// drain it.
	Drain bool `json:"drain,omitempty"`
	// Remote is a change of another server's user's cached device list
	// (internal/federation/edus, resyncs); DeviceIDs names the devices.
	Remote *RemoteChange `json:"remote,omitempty"`
}

// Signature is one uploaded signature of a device or cross-signing key.
type Signature struct {
	TargetUser string `json:"target_user"`
	// TargetKey is a device id or a cross-signing public key.
	TargetKey  string `json:"target_key"`
	SignerUser string `json:"signer_user"`
	SignerKey  string `json:"signer_key"` // "ed25519:<device id or public key>"
	Signature  string `json:"signature"`
}

// Writer applies device list updates on the device_lists stream.
type Writer interface {
	Update(ctx context.Context, u Update) error
}

var _ Writer = (*LocalWriter)(nil)

// LocalWriter writes the device_lists stream on one of its writers.
type LocalWriter struct {
	tw  *streams.TableWriter
	db  *storage.DB
	log *slog.Logger
	now func() time.Time
}

// NewLocalWriter resumes this instance's part of the device_lists stream.
// It refuses to start on an instance that is not a configured writer: its
// ids would never count in the stream's position.
func NewLocalWriter(ctx context.Context, db *storage.DB, reg *streams.Registry, log *slog.Logger) (*LocalWriter, error) {
	if !reg.IsWriter(streams.DeviceLists) {
		return nil, fmt.Errorf("keys: instance %s is not a writer of the device_lists stream (writers %v)",
			reg.Instance(), reg.Writers(streams.DeviceLists))
	}
	tw, err := streams.NewTableWriter(ctx, db, reg, streams.DeviceLists, "device_lists_stream", "stream_id", "instance_name")
	if err != nil {
		return nil, err
	}
	return &LocalWriter{tw: tw, db: db, log: log, now: time.Now}, nil
}

// Position is the writer's committed position.
func (w *LocalWriter) Position() int64 { return w.tw.Position() }

// SavePosition records the position in stream_positions.
func (w *LocalWriter) SavePosition(ctx context.Context) error { return w.tw.SavePosition(ctx) }

// Update implements Writer.
func (w *LocalWriter) Update(ctx context.Context, u Update) error {
	devices := slices.Clone(u.DeviceIDs)
	for d := range u.DeviceKeys {
		devices = append(devices, d)
	}
	if len(u.CrossSigningKeys) > 0 || u.DeleteCrossSigning {
		devices = append(devices, "")
	}
	slices.Sort(devices)
	devices = slices.Compact(devices)
	if len(devices) == 0 && !u.Drain {
		return nil
	}
	if len(devices) == 0 {
		// A drain that finds nothing (another drain took the records)
		// writes nothing and wakes nobody.
		var n int
		if err := w.db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM device_lists_outbox WHERE user_id = $1`,
			u.UserID).Scan(&n); err != nil {
			return fmt.Errorf("recorded device list changes of %s: %w", u.UserID, err)
		}
		if n == 0 {
			return nil
		}
	}
	// Who to wake is read before the write: a membership changing
	// meanwhile wakes its room through the events stream anyway.
	wake, err := wakeKeys(ctx, w.db.Reader(), u.UserID)
	if err != nil {
		return err
	}
	_, err = w.tw.Write(ctx, func(tx *sql.Tx, id int64) error {
		devices := slices.Clone(devices)
		if u.Drain {
			waiting, err := drainOutboxTx(ctx, tx, u.UserID)
			if err != nil {
				return err
			}
			devices = append(devices, waiting...)
			slices.Sort(devices)
			devices = slices.Compact(devices)
		}
		if u.Deleted {
			for _, d := range devices {
				if err := deleteDeviceKeysTx(ctx, tx, u.UserID, d); err != nil {
					return err
				}
			}
		}
		if u.DeleteCrossSigning {
			if err := deleteCrossSigningTx(ctx, tx, u.UserID); err != nil {
				return err
			}
		}
		if u.Remote != nil {
			if err := applyRemoteTx(ctx, tx, u.UserID, *u.Remote, w.now().UnixMilli()); err != nil {
				return err
			}
		}
		for d, keys := range u.DeviceKeys {
			_, err := tx.ExecContext(ctx, `INSERT INTO e2e_device_keys (user_id, device_id, key_json, ts_added) VALUES ($1, $2, $3, $4)
				ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json, ts_added = excluded.ts_added`,
				u.UserID, d, string(keys), w.now().UnixMilli())
			if err != nil {
				return fmt.Errorf("store device keys of %s: %w", d, err)
			}
		}
		for typ, key := range u.CrossSigningKeys {
			_, err := tx.ExecContext(ctx, `INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json`, u.UserID, typ, string(key))
			if err != nil {
				return fmt.Errorf("store %s key: %w", typ, err)
			}
			if typ == KeyMaster {
				// Signatures of the replaced master key are void.
				if _, err := tx.ExecContext(ctx, `DELETE FROM e2e_cross_signing_signatures
					WHERE target_user_id = $1 AND target_key_id NOT IN (SELECT device_id FROM devices WHERE user_id = $1)`,
					u.UserID); err != nil {
					return fmt.Errorf("drop signatures of the old master key: %w", err)
				}
			}
		}
		for _, sg := range u.Signatures {
			_, err := tx.ExecContext(ctx, `INSERT INTO e2e_cross_signing_signatures
				(target_user_id, target_key_id, signer_user_id, signer_key_id, signature) VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id) DO UPDATE SET signature = excluded.signature`,
				sg.TargetUser, sg.TargetKey, sg.SignerUser, sg.SignerKey, sg.Signature)
			if err != nil {
				return fmt.Errorf("store signature: %w", err)
			}
		}
		for _, d := range devices {
			_, err := tx.ExecContext(ctx, `INSERT INTO device_lists_stream (stream_id, instance_name, user_id, device_id)
				VALUES ($1, $2, $3, $4)`, id, w.tw.Instance(), u.UserID, d)
			if err != nil {
				return fmt.Errorf("record device list change: %w", err)
			}
		}
		return nil
	}, wake...)
	if err != nil {
		return fmt.Errorf("update device list of %s: %w", u.UserID, err)
	}
	return nil
}

// wakeKeys are the notifier keys a change of userID's devices wakes: the
// user's own syncs and those listening on the rooms the user is joined to,
// i.e. everyone who shares a room with the user.
func wakeKeys(ctx context.Context, q storage.Querier, userID string) ([]string, error) {
	rooms, err := joinedRooms(ctx, q, userID)
	if err != nil {
		return nil, err
	}
	keys := []string{streams.UserKey(userID)}
	for _, r := range rooms {
		keys = append(keys, streams.RoomKey(r))
	}
	return keys, nil
}

// joinedRooms lists the rooms userID is joined to. The keys domain reads
// room membership straight from current_state: it needs nothing else of
// the rooms domain.
func joinedRooms(ctx context.Context, q storage.Querier, userID string) ([]string, error) {
	rows, err := q.QueryContext(ctx, `SELECT room_id FROM current_state
		WHERE type = 'm.room.member' AND state_key = $1 AND membership = 'join'`, userID)
	if err != nil {
		return nil, fmt.Errorf("joined rooms of %s: %w", userID, err)
	}
	return scanStrings(rows)
}

func scanStrings(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// ShardedWriter sends each user's updates to the device_lists writer that
// owns the user (config.ShardFor over the configured writers), locally when
// that is this process. One user's changes are thus ordered by one writer.
type ShardedWriter struct {
	instance string
	writers  []string
	local    *LocalWriter // nil when this process writes no shard
	remote   func(writer string) Writer
}

// NewShardedWriter builds the writer for a process; remote makes the
// forwarding writer for another instance.
func NewShardedWriter(instance string, writers []string, local *LocalWriter, remote func(writer string) Writer) *ShardedWriter {
	return &ShardedWriter{instance: instance, writers: writers, local: local, remote: remote}
}

var _ Writer = (*ShardedWriter)(nil)

// Update implements Writer.
func (w *ShardedWriter) Update(ctx context.Context, u Update) error {
	target := config.ShardFor(w.writers, u.UserID)
	if target == w.instance && w.local != nil {
		return w.local.Update(ctx, u)
	}
	return w.remote(target).Update(ctx, u)
}

// Source is the device_lists stream's replication source. A row is one
// change: ["@user:server", ["DEVICE", ...]].
type Source struct{ db *storage.DB }

func NewSource(db *storage.DB) *Source { return &Source{db: db} }

var _ streams.Source = (*Source)(nil)

// Rows implements streams.Source: one row per stream id, never split by the
// limit (a split row would lose its remaining devices to the next read).
func (s *Source) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_id, user_id, device_id FROM device_lists_stream
		WHERE instance_name = $1 AND stream_id IN (SELECT DISTINCT stream_id FROM device_lists_stream
			WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id LIMIT $4)
		ORDER BY stream_id, device_id`, writer, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read device_lists rows: %w", err)
	}
	defer rows.Close()
	var out []streams.Row
	var cur int64 = -1
	var user string
	var devices []string
	flush := func() {
		if cur >= 0 {
			b, _ := json.Marshal([]any{user, devices})
			out = append(out, streams.Row{Token: cur, Data: b})
		}
	}
	for rows.Next() {
		var id int64
		var u, d string
		if err := rows.Scan(&id, &u, &d); err != nil {
			return nil, fmt.Errorf("read device_lists rows: %w", err)
		}
		if id != cur {
			flush()
			cur, user, devices = id, u, nil
		}
		devices = append(devices, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read device_lists rows: %w", err)
	}
	flush()
	return out, nil
}

// Apply implements streams.Source: a change wakes the user and the rooms
// the user is in.
func (s *Source) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var f []json.RawMessage
	var user string
	if json.Unmarshal(row.Data, &f) != nil || len(f) < 1 || json.Unmarshal(f[0], &user) != nil {
		return nil
	}
	keys, err := wakeKeys(ctx, s.db.Reader(), user)
	if err != nil {
		return []string{streams.UserKey(user)}
	}
	return keys
}
