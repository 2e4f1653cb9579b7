package keys

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Federation is what the keys service asks other servers through: the
// signed outbound client (*client.Client satisfies it).
type Federation interface {
	SignedGetJSON(ctx context.Context, destination, path string, out any) error
	SignedPostJSON(ctx context.Context, destination, path string, body, out any) error
}

// SetFederation lets /keys/query and /keys/claim ask other servers about
// their users, and device list resyncs fetch user/devices. Without it,
// remote users are answered by a failure for their server. Call before
// serving.
func (s *Service) SetFederation(f Federation) { s.fed = f }

// Timeouts of the remote part of /keys/query and /keys/claim: the spec's
// default for a request without timeout, and a cap so a client cannot
// hold a request (and its goroutines) open for long.
const (
	DefaultRemoteTimeout = 10 * time.Second
	MaxRemoteTimeout     = 60 * time.Second
)

// RemoteTimeout turns a request's timeout (milliseconds, nil when absent)
// into the time given to other servers.
func RemoteTimeout(ms *int64) time.Duration {
	if ms == nil || *ms <= 0 {
		return DefaultRemoteTimeout
	}
	return min(time.Duration(*ms)*time.Millisecond, MaxRemoteTimeout)
}

// RemoteDevice is one device of another server's user as we cache it.
type RemoteDevice struct {
	DeviceID    string  `json:"device_id"`
	DisplayName *string `json:"display_name,omitempty"`
	// Keys are the device's signed keys without unsigned (nil when the
	// device uploaded none).
	Keys json.RawMessage `json:"keys,omitempty"`
	// Deleted removes the device from the cache.
	Deleted bool `json:"deleted,omitempty"`
}

// RemoteChange is a change of the cached device list of another server's
// user, applied by the device_lists writer owning the user in the
// transaction of the stream row that tells local users sharing a room with
// them (Update.Remote).
type RemoteChange struct {
	// StreamID is the user's stream id on their server after the change.
	StreamID int64 `json:"stream_id"`
	// Resync means Devices is the whole list (a user/devices answer).
	Resync  bool           `json:"resync,omitempty"`
	Devices []RemoteDevice `json:"devices,omitempty"`
}

// RemoteList is how far we follow a remote user's device list.
type RemoteList struct {
	// Known is false for a user we do not follow: no update was applied.
	Known    bool
	StreamID int64
	// Stale lists are resynced before they are trusted.
	Stale bool
}

// RemoteListState reads how far we follow userID's device list.
func (s *Service) RemoteListState(ctx context.Context, userID string) (RemoteList, error) {
	var l RemoteList
	err := s.db.Reader().QueryRowContext(ctx, `SELECT stream_id, stale FROM remote_device_lists WHERE user_id = $1`, userID).
		Scan(&l.StreamID, &l.Stale)
	if errors.Is(err, sql.ErrNoRows) {
		return RemoteList{}, nil
	}
	if err != nil {
		return RemoteList{}, fmt.Errorf("device list state of %s: %w", userID, err)
	}
	l.Known = true
	return l, nil
}

// MarkRemoteStale records that a followed list may have missed updates
// (a resync failed; or, for the remote-event path to call, the user joined
// a room we are in, after a time when no room was shared and their server
// sent us nothing): queries ask the user's server, and the next update
// resyncs, until a resync succeeds.
func (s *Service) MarkRemoteStale(ctx context.Context, userID string) error {
	if _, err := s.db.Exec(ctx, `UPDATE remote_device_lists SET stale = TRUE WHERE user_id = $1`, userID); err != nil {
		return fmt.Errorf("mark device list of %s stale: %w", userID, err)
	}
	return nil
}

// ApplyRemote hands a change of a remote user's device list (and
// cross-signing keys, by type) to the device_lists writer owning the user,
// which stores it and announces it to local users sharing a room with
// them. changed names the devices the change concerns.
func (s *Service) ApplyRemote(ctx context.Context, userID string, c RemoteChange, crossSigning map[string]json.RawMessage) error {
	ids := make([]string, 0, len(c.Devices)+1)
	for _, d := range c.Devices {
		ids = append(ids, d.DeviceID)
	}
	if len(ids) == 0 {
		ids = append(ids, "") // a list that became empty is still a change
	}
	return s.w.Update(ctx, Update{UserID: userID, DeviceIDs: ids, CrossSigningKeys: crossSigning, Remote: &c})
}

// ApplyRemoteCrossSigning hands a remote user's new cross-signing keys
// (by type) to the device_lists writer owning the user, which stores and
// announces them ("" device). The device list's position does not move.
func (s *Service) ApplyRemoteCrossSigning(ctx context.Context, userID string, crossSigning map[string]json.RawMessage) error {
	return s.w.Update(ctx, Update{UserID: userID, CrossSigningKeys: crossSigning})
}

// AnnounceRemote tells local users sharing a room with a remote user that
// the user's devices changed, without changing the cache: after a failed
// resync their clients query again, and the stale list sends that query to
// the user's server.
func (s *Service) AnnounceRemote(ctx context.Context, userID string, deviceIDs []string) error {
	return s.w.Update(ctx, Update{UserID: userID, DeviceIDs: deviceIDs})
}

// applyRemoteTx stores a remote change (in the writer's transaction).
func applyRemoteTx(ctx context.Context, tx *sql.Tx, userID string, c RemoteChange, now int64) error {
	if c.Resync {
		if _, err := tx.ExecContext(ctx, `DELETE FROM remote_devices WHERE user_id = $1`, userID); err != nil {
			return fmt.Errorf("replace cached devices of %s: %w", userID, err)
		}
	}
	for _, d := range c.Devices {
		if d.Deleted {
			if _, err := tx.ExecContext(ctx, `DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2`, userID, d.DeviceID); err != nil {
				return fmt.Errorf("drop cached device %s of %s: %w", d.DeviceID, userID, err)
			}
			continue
		}
		var keys sql.NullString
		if len(d.Keys) > 0 {
			keys = sql.NullString{String: string(d.Keys), Valid: true}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO remote_devices (user_id, device_id, display_name, key_json) VALUES ($1, $2, $3, $4)
			ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name, key_json = excluded.key_json`,
			userID, d.DeviceID, d.DisplayName, keys); err != nil {
			return fmt.Errorf("cache device %s of %s: %w", d.DeviceID, userID, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts) VALUES ($1, $2, FALSE, $3)
		ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = FALSE, updated_ts = excluded.updated_ts`,
		userID, c.StreamID, now); err != nil {
		return fmt.Errorf("record device list position of %s: %w", userID, err)
	}
	return nil
}

// RemoteDeviceKeys checks one remote device's keys as another server sent
// them: an object naming userID and deviceID. It returns them canonical,
// without unsigned (the display name is kept apart), and the display name
// unsigned carried.
func RemoteDeviceKeys(raw json.RawMessage, userID, deviceID string) (json.RawMessage, *string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, nil, fmt.Errorf("keys of %s/%s are not an object", userID, deviceID)
	}
	var ids struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	if err := json.Unmarshal(raw, &ids); err != nil || ids.UserID != userID || ids.DeviceID != deviceID {
		return nil, nil, fmt.Errorf("keys of %s/%s name %s/%s", userID, deviceID, ids.UserID, ids.DeviceID)
	}
	var name *string
	var unsigned struct {
		Name *string `json:"device_display_name"`
	}
	if u, ok := obj["unsigned"]; ok && json.Unmarshal(u, &unsigned) == nil {
		name = unsigned.Name
	}
	delete(obj, "unsigned")
	c, err := canonicalObject(obj)
	if err != nil {
		return nil, nil, fmt.Errorf("keys of %s/%s: %w", userID, deviceID, err)
	}
	return c, name, nil
}

// ResyncRemote fetches a remote user's whole device list from their
// server (GET user/devices) and applies it. On failure a followed list is
// marked stale, so queries ask the server until a later resync succeeds.
func (s *Service) ResyncRemote(ctx context.Context, userID string) error {
	err := s.resyncRemote(ctx, userID)
	if err != nil {
		if mErr := s.MarkRemoteStale(ctx, userID); mErr != nil {
			s.log.Warn("device list resync", "user_id", userID, "err", mErr)
		}
	}
	return err
}

func (s *Service) resyncRemote(ctx context.Context, userID string) error {
	server := serverOf(userID)
	if s.fed == nil || server == "" {
		return fmt.Errorf("resync device list of %s: no federation", userID)
	}
	var ans FederationDevices
	if err := s.fed.SignedGetJSON(ctx, server, "/_matrix/federation/v1/user/devices/"+url.PathEscape(userID), &ans); err != nil {
		return fmt.Errorf("resync device list of %s: %w", userID, err)
	}
	if ans.UserID != userID {
		return fmt.Errorf("resync device list of %s: %s answered for %q", userID, server, ans.UserID)
	}
	c := RemoteChange{StreamID: ans.StreamID, Resync: true}
	for _, d := range ans.Devices {
		if d.DeviceID == "" {
			continue
		}
		rd := RemoteDevice{DeviceID: d.DeviceID, DisplayName: d.DisplayName}
		if len(d.Keys) > 0 && string(d.Keys) != "null" {
			k, _, err := RemoteDeviceKeys(d.Keys, userID, d.DeviceID)
			if err != nil {
				s.log.Info("ignoring device keys in a device list resync", "user_id", userID, "err", err)
			} else {
				rd.Keys = k
			}
		}
		c.Devices = append(c.Devices, rd)
	}
	return s.ApplyRemote(ctx, userID, c, s.remoteCrossSigning(userID, map[string]json.RawMessage{
		KeyMaster: ans.MasterKey, KeySelfSigning: ans.SelfSigningKey}))
}

// remoteCrossSigning keeps the valid master and self-signing keys of a
// remote user (a user-signing key never leaves its owner's server).
func (s *Service) remoteCrossSigning(userID string, given map[string]json.RawMessage) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for _, typ := range []string{KeyMaster, KeySelfSigning} {
		raw := given[typ]
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		k, err := parseCrossSigningKey(raw, userID, typ)
		if err != nil {
			s.log.Info("ignoring a remote cross-signing key", "user_id", userID, "key_type", typ, "err", err)
			continue
		}
		out[typ] = k.canon
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// RemoteCrossSigning checks the cross-signing keys of a remote user (an
// m.signing_key_update EDU), keeping the valid master and self-signing
// keys.
func (s *Service) RemoteCrossSigning(userID string, given map[string]json.RawMessage) map[string]json.RawMessage {
	return s.remoteCrossSigning(userID, given)
}

// serverOf is the server name of a user id ("" if malformed).
func serverOf(userID string) string {
	if len(userID) < 4 || userID[0] != '@' {
		return ""
	}
	_, server, _ := strings.Cut(userID[1:], ":")
	return server
}

// cachedDeviceKeysOf loads the cached device keys of the listed remote
// users (only the devices want names, if it names any) into out.
func (s *Service) cachedDeviceKeysOf(ctx context.Context, users []string, want map[string][]string,
	sigs map[string]map[string][]Signature, out map[string]map[string]json.RawMessage) error {
	list, _ := json.Marshal(users)
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT user_id, device_id, key_json, display_name FROM remote_devices
		WHERE key_json IS NOT NULL AND user_id IN (`+s.stringList(1)+`)`, string(list))
	if err != nil {
		return fmt.Errorf("cached device keys: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var userID, deviceID, keyJSON string
		var name sql.NullString
		if err := rows.Scan(&userID, &deviceID, &keyJSON, &name); err != nil {
			return fmt.Errorf("cached device keys: %w", err)
		}
		if only := want[userID]; len(only) > 0 && !slices.Contains(only, deviceID) {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(keyJSON), &obj); err != nil {
			return fmt.Errorf("cached device keys of %s/%s: %w", userID, deviceID, err)
		}
		mergeSignatures(obj, sigs[userID][deviceID])
		if name.Valid {
			obj["unsigned"], _ = json.Marshal(map[string]string{"device_display_name": name.String})
		}
		if out[userID] == nil {
			out[userID] = map[string]json.RawMessage{}
		}
		out[userID][deviceID], _ = json.Marshal(obj)
	}
	return rows.Err()
}

// hasCachedDevices reports which of users have cached devices.
func (s *Service) hasCachedDevices(ctx context.Context, users []string) (map[string]bool, error) {
	list, _ := json.Marshal(users)
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT user_id FROM remote_devices WHERE user_id IN (`+s.stringList(1)+`)`, string(list))
	if err != nil {
		return nil, fmt.Errorf("cached device lists: %w", err)
	}
	got, err := scanStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("cached device lists: %w", err)
	}
	out := map[string]bool{}
	for _, u := range got {
		out[u] = true
	}
	return out, nil
}

// followedFresh returns which of users have a followed, fresh device list
// and still share a joined room with a local user: queries about them are
// answered from the cache, as Synapse does for the users it shares a room
// with (their server keeps the list up to date with m.device_list_update,
// which it stops sending when no room is shared any more).
func (s *Service) followedFresh(ctx context.Context, users []string) (map[string]bool, error) {
	list, _ := json.Marshal(users)
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT r.user_id FROM remote_device_lists r
		WHERE NOT r.stale AND r.user_id IN (`+s.stringList(1)+`) AND EXISTS (
			SELECT 1 FROM current_state them JOIN current_state us ON us.room_id = them.room_id
			WHERE them.type = 'm.room.member' AND them.state_key = r.user_id AND them.membership = 'join'
			AND us.type = 'm.room.member' AND us.membership = 'join' AND us.state_key LIKE $2)`,
		string(list), "%:"+s.serverName)
	if err != nil {
		return nil, fmt.Errorf("followed device lists: %w", err)
	}
	got, err := scanStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("followed device lists: %w", err)
	}
	out := map[string]bool{}
	for _, u := range got {
		out[u] = true
	}
	return out, nil
}

// fillCache stores what a user/keys/query answer said about users we do
// not follow, without announcing anything (an announcement would make
// the asking client query again, for ever): it serves queries while
// their server is unreachable. Followed users' entries change only with
// their updates.
func (s *Service) fillCache(ctx context.Context, userID string, devices map[string]json.RawMessage, crossSigning map[string]json.RawMessage) error {
	return s.db.Tx(ctx, func(tx *sql.Tx) error {
		var followed int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM remote_device_lists WHERE user_id = $1`, userID).Scan(&followed)
		if err == nil {
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		for deviceID, raw := range devices {
			k, name, err := RemoteDeviceKeys(raw, userID, deviceID)
			if err != nil {
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO remote_devices (user_id, device_id, display_name, key_json) VALUES ($1, $2, $3, $4)
				ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name, key_json = excluded.key_json`,
				userID, deviceID, name, string(k)); err != nil {
				return err
			}
		}
		for typ, key := range crossSigning {
			if _, err := tx.ExecContext(ctx, `INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json`, userID, typ, string(key)); err != nil {
				return err
			}
		}
		return nil
	})
}
