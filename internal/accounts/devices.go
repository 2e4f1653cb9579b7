package accounts

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Device is a user's device as the client API shows it.
type Device struct {
	DeviceID    string  `json:"device_id"`
	DisplayName *string `json:"display_name,omitempty"`
	LastSeenIP  *string `json:"last_seen_ip,omitempty"`
	LastSeenTS  *int64  `json:"last_seen_ts,omitempty"`
	UserID      string  `json:"-"`
}

// Devices lists a user's devices.
func (s *Service) Devices(ctx context.Context, userID string) ([]Device, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT device_id, display_name, last_seen_ip, last_seen_ts
		FROM devices WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("list devices of %s: %w", userID, err)
	}
	defer rows.Close()
	out := []Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices of %s: %w", userID, err)
		}
		d.UserID = userID
		out = append(out, d)
	}
	return out, rows.Err()
}

type scanner interface{ Scan(dest ...any) error }

func scanDevice(sc scanner) (Device, error) {
	var d Device
	var name, ip sql.NullString
	var ts sql.NullInt64
	if err := sc.Scan(&d.DeviceID, &name, &ip, &ts); err != nil {
		return d, err
	}
	if name.Valid {
		d.DisplayName = &name.String
	}
	if ip.Valid {
		d.LastSeenIP = &ip.String
	}
	if ts.Valid {
		d.LastSeenTS = &ts.Int64
	}
	return d, nil
}

// Device returns one device, or nil.
func (s *Service) Device(ctx context.Context, userID, deviceID string) (*Device, error) {
	d, err := scanDevice(s.db.Reader().QueryRowContext(ctx, `SELECT device_id, display_name, last_seen_ip, last_seen_ts
		FROM devices WHERE user_id = $1 AND device_id = $2`, userID, deviceID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get device %s of %s: %w", deviceID, userID, err)
	}
	d.UserID = userID
	return &d, nil
}

// SetDeviceName renames a device; false if it does not exist.
func (s *Service) SetDeviceName(ctx context.Context, userID, deviceID, name string) (bool, error) {
	var n int64
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3`,
			name, userID, deviceID)
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil || n == 0 {
			return err
		}
		return s.recordDevicesTx(ctx, tx, userID, []string{deviceID}, false)
	})
	if err != nil {
		return false, fmt.Errorf("rename device %s of %s: %w", deviceID, userID, err)
	}
	if n > 0 {
		s.announceDevices(ctx, userID)
	}
	return n > 0, nil
}

// DeleteDevices removes devices and their tokens.
func (s *Service) DeleteDevices(ctx context.Context, userID string, deviceIDs []string) error {
	var gone []string
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		gone = nil
		for _, d := range deviceIDs {
			g, err := s.deleteDevicesTx(ctx, tx, userID, `device_id = $2`, d)
			if err != nil {
				return err
			}
			gone = append(gone, g...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete devices of %s: %w", userID, err)
	}
	s.devicesGone(ctx, userID, gone)
	return nil
}
