package keys

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
)

// FederationDevice is one device in a federation user/devices answer.
type FederationDevice struct {
	DeviceID string `json:"device_id"`
	// Keys are the device's signed keys, absent if it never uploaded any.
	Keys        json.RawMessage `json:"keys,omitempty"`
	DisplayName *string         `json:"device_display_name,omitempty"`
}

// FederationDevices is the answer of GET /_matrix/federation/v1/user/devices.
type FederationDevices struct {
	UserID string `json:"user_id"`
	// StreamID is the prev_id a server resyncing from this answer should
	// expect the next m.device_list_update EDU it gets to name: the
	// stream id of the last one queued for it (0 when none was), as the
	// federation sender numbers them.
	StreamID       int64              `json:"stream_id"`
	Devices        []FederationDevice `json:"devices"`
	MasterKey      json.RawMessage    `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage    `json:"self_signing_key,omitempty"`
}

// UserDevices lists a local user's devices for another server: every
// device, with its keys if uploaded (and the user's own signatures of
// them), and the user's master and self-signing keys. found is false for a
// user who does not exist here. The caller checks the user is local.
//
// The stream id is read before the devices: a change committed in between
// is then both in the answer and announced after the id, so the remote
// server applies it twice (harmless) rather than never.
// destination is the asking server.
func (s *Service) UserDevices(ctx context.Context, userID, destination string) (res *FederationDevices, found bool, err error) {
	db := s.db.Reader()
	var exists int
	switch err := db.QueryRowContext(ctx, `SELECT 1 FROM users WHERE user_id = $1`, userID).Scan(&exists); {
	case err == sql.ErrNoRows:
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("look up %s for federation: %w", userID, err)
	}
	res = &FederationDevices{UserID: userID, Devices: []FederationDevice{}}
	// The sender chains prev_id per destination over its own numbering
	// (federation_device_list_sent), so that is what the asking server
	// must compare the next update with; the raw stream position would
	// never match and make it resync after every update.
	err = db.QueryRowContext(ctx, `SELECT stream_id FROM federation_device_list_sent WHERE destination = $1 AND user_id = $2`,
		destination, userID).Scan(&res.StreamID)
	if err != nil && err != sql.ErrNoRows {
		return nil, false, fmt.Errorf("device list position of %s for %s: %w", userID, destination, err)
	}
	q, err := s.QueryKeys(ctx, userID, map[string][]string{userID: {}})
	if err != nil {
		return nil, false, err
	}
	rows, err := db.QueryContext(ctx, `SELECT device_id, display_name FROM devices WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		return nil, false, fmt.Errorf("devices of %s: %w", userID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var d FederationDevice
		var name sql.NullString
		if err := rows.Scan(&d.DeviceID, &name); err != nil {
			return nil, false, fmt.Errorf("devices of %s: %w", userID, err)
		}
		if name.Valid {
			d.DisplayName = &name.String
		}
		d.Keys = q.DeviceKeys[userID][d.DeviceID]
		res.Devices = append(res.Devices, d)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("devices of %s: %w", userID, err)
	}
	res.MasterKey = q.MasterKeys[userID]
	res.SelfSigningKey = q.SelfSigningKeys[userID]
	return res, true, nil
}
