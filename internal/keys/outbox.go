package keys

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"ganglion/internal/config"
)

// Device list changes made by other domains (accounts: logins, renames,
// deletions, deactivation) are recorded in device_lists_outbox inside the
// transaction that makes them, and announced afterwards by the user's
// device_lists writer, which deletes the record in the transaction that
// writes the stream row. A process that dies between its commit and the
// announcement (or cannot reach the writer) therefore loses nothing: the
// record waits until the writer drains it, at its start and every
// outboxSweep.

// outboxSweep is how often a device_lists writer drains its users'
// records that nobody announced (their process died or the writer was
// down when they were made).
const outboxSweep = 10 * time.Second

// DevicesChangedTx records, in the caller's transaction, that devices of
// userID were created, renamed or deleted (implements the accounts
// domain's DeviceListHook). Deleted devices lose their keys and the
// signatures of them in the same transaction.
func (s *Service) DevicesChangedTx(ctx context.Context, tx *sql.Tx, userID string, deviceIDs []string, deleted bool) error {
	for _, d := range deviceIDs {
		if deleted {
			if err := deleteDeviceKeysTx(ctx, tx, userID, d); err != nil {
				return err
			}
		}
		if err := s.recordTx(ctx, tx, userID, d); err != nil {
			return err
		}
	}
	return nil
}

// UserDeactivatedTx deletes, in the deactivation's transaction, what a
// deactivated user leaves in the keys domain beyond its devices' keys: the
// cross-signing keys and every signature of or by the user (recorded as a
// change of "", so clients sharing a room forget them) and every key
// backup. Backup versions stay as deleted rows so a version number is
// never reused.
func (s *Service) UserDeactivatedTx(ctx context.Context, tx *sql.Tx, userID string) error {
	if err := deleteCrossSigningTx(ctx, tx, userID); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM e2e_room_keys WHERE user_id = $1`, userID); err != nil {
		return fmt.Errorf("delete key backups of deactivated %s: %w", userID, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE e2e_room_keys_versions SET deleted = TRUE WHERE user_id = $1`, userID); err != nil {
		return fmt.Errorf("delete key backups of deactivated %s: %w", userID, err)
	}
	return s.recordTx(ctx, tx, userID, "")
}

// AnnounceDeviceChanges announces userID's recorded changes now (called
// after the recording transaction committed). An error loses nothing: the
// records stay for the writer's next drain.
func (s *Service) AnnounceDeviceChanges(ctx context.Context, userID string) error {
	if err := s.w.Update(ctx, Update{UserID: userID, Drain: true}); err != nil {
		return fmt.Errorf("announce recorded device list changes of %s: %w", userID, err)
	}
	return nil
}

func (s *Service) recordTx(ctx context.Context, tx *sql.Tx, userID, deviceID string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO device_lists_outbox (user_id, device_id, created_ts) VALUES ($1, $2, $3)`,
		userID, deviceID, s.now().UnixMilli())
	if err != nil {
		return fmt.Errorf("record device list change of %s: %w", userID, err)
	}
	return nil
}

// drainOutboxTx deletes userID's records in the writer's transaction and
// returns the devices they name. It also repairs what a request racing the
// change may have written meanwhile: keys uploaded for a device deleted
// since (its upload checked the device before the deletion committed) and
// cross-signing keys of a user deactivated since.
func drainOutboxTx(ctx context.Context, tx *sql.Tx, userID string) ([]string, error) {
	rows, err := tx.QueryContext(ctx, `DELETE FROM device_lists_outbox WHERE user_id = $1 RETURNING device_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("drain recorded device list changes of %s: %w", userID, err)
	}
	devices, err := scanStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("drain recorded device list changes of %s: %w", userID, err)
	}
	for _, d := range devices {
		if d == "" {
			var deactivated bool
			err := tx.QueryRowContext(ctx, `SELECT deactivated FROM users WHERE user_id = $1`, userID).Scan(&deactivated)
			if err != nil && err != sql.ErrNoRows {
				return nil, fmt.Errorf("is %s deactivated: %w", userID, err)
			}
			if deactivated {
				if err := deleteCrossSigningTx(ctx, tx, userID); err != nil {
					return nil, err
				}
			}
			continue
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM devices WHERE user_id = $1 AND device_id = $2`,
			userID, d).Scan(&n); err != nil {
			return nil, fmt.Errorf("does device %s of %s exist: %w", d, userID, err)
		}
		if n == 0 {
			if err := deleteDeviceKeysTx(ctx, tx, userID, d); err != nil {
				return nil, err
			}
		}
	}
	return devices, nil
}

// deleteDeviceKeysTx deletes a device's keys and the signatures of them.
func deleteDeviceKeysTx(ctx context.Context, tx *sql.Tx, userID, deviceID string) error {
	for _, table := range []string{"e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys"} {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE user_id = $1 AND device_id = $2`, userID, deviceID); err != nil {
			return fmt.Errorf("delete keys of %s/%s: %w", userID, deviceID, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM e2e_cross_signing_signatures
		WHERE target_user_id = $1 AND target_key_id = $2`, userID, deviceID); err != nil {
		return fmt.Errorf("delete signatures of %s/%s: %w", userID, deviceID, err)
	}
	return nil
}

// deleteCrossSigningTx deletes a user's cross-signing keys and every
// signature of or by the user.
func deleteCrossSigningTx(ctx context.Context, tx *sql.Tx, userID string) error {
	for _, q := range []string{
		`DELETE FROM e2e_cross_signing_keys WHERE user_id = $1`,
		`DELETE FROM e2e_cross_signing_signatures WHERE target_user_id = $1 OR signer_user_id = $1`,
	} {
		if _, err := tx.ExecContext(ctx, q, userID); err != nil {
			return fmt.Errorf("delete cross-signing keys of %s: %w", userID, err)
		}
	}
	return nil
}

// DrainOutbox announces the recorded changes of every user this process's
// device_lists writer owns (owns reports which). It returns the first
// error after trying every user.
func (s *Service) DrainOutbox(ctx context.Context, owns func(userID string) bool) error {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT user_id FROM device_lists_outbox`)
	if err != nil {
		return fmt.Errorf("list recorded device list changes: %w", err)
	}
	users, err := scanStrings(rows)
	if err != nil {
		return fmt.Errorf("list recorded device list changes: %w", err)
	}
	var first error
	for _, u := range users {
		if !owns(u) {
			continue
		}
		if err := s.AnnounceDeviceChanges(ctx, u); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// RunOutboxDrainer drains at start and every outboxSweep until ctx ends;
// failures are logged and retried at the next sweep.
func (s *Service) RunOutboxDrainer(ctx context.Context, owns func(userID string) bool) error {
	t := time.NewTicker(outboxSweep)
	defer t.Stop()
	for {
		if err := s.DrainOutbox(ctx, owns); err != nil && ctx.Err() == nil {
			s.log.Warn("could not announce recorded device list changes; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Owns reports whether this process's local writer owns userID's shard.
func (w *ShardedWriter) Owns(userID string) bool {
	return w.local != nil && config.ShardFor(w.writers, userID) == w.instance
}
