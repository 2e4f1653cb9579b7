package accounts

import (
	"context"
	"database/sql"
	"fmt"
)

// Devices without an access token (a dehydrated device, MSC3814, is one:
// it is used by logging in as a new device that takes its keys over) are
// made and deleted by other domains inside their own transactions, so the
// device, their rows about it and the device list change commit together.

// CreateTokenlessDeviceTx creates (or renames) a device that has no token
// and records the device list change, in tx.
func (s *Service) CreateTokenlessDeviceTx(ctx context.Context, tx *sql.Tx, userID, deviceID, name string) error {
	now := s.nowMS()
	_, err := tx.ExecContext(ctx, `INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts)
		VALUES ($1, $2, $3, $4, $4)
		ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = COALESCE(excluded.display_name, devices.display_name)`,
		userID, deviceID, nullString(name), now)
	if err != nil {
		return fmt.Errorf("create device %s of %s: %w", deviceID, userID, err)
	}
	return s.recordDevicesTx(ctx, tx, userID, []string{deviceID}, false)
}

// DeleteDeviceTx deletes one device with its tokens and records the device
// list change, in tx; it reports whether the device existed.
func (s *Service) DeleteDeviceTx(ctx context.Context, tx *sql.Tx, userID, deviceID string) (bool, error) {
	gone, err := s.deleteDevicesTx(ctx, tx, userID, `device_id = $2`, deviceID)
	if err != nil {
		return false, fmt.Errorf("delete device %s of %s: %w", deviceID, userID, err)
	}
	return len(gone) > 0, nil
}

// DevicesCommitted runs, after the commit of a transaction that used
// CreateTokenlessDeviceTx or DeleteDeviceTx, what follows a device change:
// the announcement and the cleanup after deleted devices.
func (s *Service) DevicesCommitted(ctx context.Context, userID string, deleted []string) {
	if len(deleted) > 0 {
		s.devicesGone(ctx, userID, deleted)
		return
	}
	s.announceDevices(ctx, userID)
}
