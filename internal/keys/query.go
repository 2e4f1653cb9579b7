package keys

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"ganglion/internal/storage"
)

// localUser reports whether userID is a well-formed id on this server.
func (s *Service) localUser(userID string) (bool, error) {
	if len(userID) < 4 || userID[0] != '@' {
		return false, fmt.Errorf("invalid user id %q", userID)
	}
	_, server, ok := strings.Cut(userID[1:], ":")
	if !ok || server == "" {
		return false, fmt.Errorf("invalid user id %q", userID)
	}
	return server == s.serverName, nil
}

// QueryResult is the body of a /keys/query answer.
type QueryResult struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	Failures        map[string]json.RawMessage            `json:"failures"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
	// UserSigningKeys holds only the requester's own key.
	UserSigningKeys map[string]json.RawMessage `json:"user_signing_keys"`
}

// QueryKeys returns the device keys of the requested users' devices (an
// empty list means every device). Devices without keys, unknown devices and
// users of other servers (no federation yet) are left out.
func (s *Service) QueryKeys(ctx context.Context, requester string, want map[string][]string) (*QueryResult, error) {
	res := &QueryResult{DeviceKeys: map[string]map[string]json.RawMessage{}, Failures: map[string]json.RawMessage{},
		MasterKeys: map[string]json.RawMessage{}, SelfSigningKeys: map[string]json.RawMessage{}, UserSigningKeys: map[string]json.RawMessage{}}
	for userID, devices := range want {
		local, err := s.localUser(userID)
		if err != nil || !local {
			continue
		}
		sigs, err := s.signaturesFor(ctx, userID, requester)
		if err != nil {
			return nil, err
		}
		keys, err := s.deviceKeys(ctx, userID, devices, sigs)
		if err != nil {
			return nil, err
		}
		res.DeviceKeys[userID] = keys
		cs, err := s.storedCrossSigningKeys(ctx, s.db.Reader(), userID)
		if err != nil {
			return nil, err
		}
		for typ, k := range cs {
			obj := make(map[string]json.RawMessage, len(k.obj))
			for f, v := range k.obj {
				obj[f] = v
			}
			mergeSignatures(obj, sigs[k.pub])
			b, _ := json.Marshal(obj)
			switch typ {
			case KeyMaster:
				res.MasterKeys[userID] = b
			case KeySelfSigning:
				res.SelfSigningKeys[userID] = b
			case KeyUserSigning:
				if userID == requester {
					res.UserSigningKeys[userID] = b
				}
			}
		}
	}
	return res, nil
}

// deviceKeys loads a user's device keys with the devices' display names in
// unsigned, as clients show them.
func (s *Service) deviceKeys(ctx context.Context, userID string, only []string, sigs map[string][]Signature) (map[string]json.RawMessage, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT k.device_id, k.key_json, d.display_name FROM e2e_device_keys k
		JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id WHERE k.user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("device keys of %s: %w", userID, err)
	}
	defer rows.Close()
	out := map[string]json.RawMessage{}
	for rows.Next() {
		var deviceID, keyJSON string
		var name sql.NullString
		if err := rows.Scan(&deviceID, &keyJSON, &name); err != nil {
			return nil, fmt.Errorf("device keys of %s: %w", userID, err)
		}
		if len(only) > 0 && !slices.Contains(only, deviceID) {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(keyJSON), &obj); err != nil {
			return nil, fmt.Errorf("device keys of %s/%s: %w", userID, deviceID, err)
		}
		mergeSignatures(obj, sigs[deviceID])
		if name.Valid {
			obj["unsigned"], _ = json.Marshal(map[string]string{"device_display_name": name.String})
		}
		out[deviceID], _ = json.Marshal(obj)
	}
	return out, rows.Err()
}

// ClaimResult is the body of a /keys/claim answer.
type ClaimResult struct {
	OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	Failures    map[string]json.RawMessage                       `json:"failures"`
}

// ClaimKeys hands out one key per requested device and algorithm: the
// device's oldest one-time key, deleted as it is handed out, or else its
// fallback key, which stays (marked used). Devices with neither are left
// out.
//
// Each claim is one statement, DELETE of the oldest row RETURNING it. On
// PostgreSQL the row is picked FOR UPDATE SKIP LOCKED: a concurrent claimer
// that picked the same row first holds its lock, so this one takes the next
// row instead of waiting and then deleting nothing; a key is never handed
// out twice and no claimer falls back while unclaimed keys remain. SQLite
// has one writer, which serialises claims.
func (s *Service) ClaimKeys(ctx context.Context, want map[string]map[string]string) (*ClaimResult, error) {
	res := &ClaimResult{OneTimeKeys: map[string]map[string]map[string]json.RawMessage{}, Failures: map[string]json.RawMessage{}}
	lock := ""
	if s.db.Engine() == storage.Postgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	claimOTK := `DELETE FROM e2e_one_time_keys WHERE (user_id, device_id, algorithm, key_id) IN (
		SELECT user_id, device_id, algorithm, key_id FROM e2e_one_time_keys
		WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY ts_added, key_id LIMIT 1` + lock + `)
		RETURNING key_id, key_json`
	users := make([]string, 0, len(want))
	for u := range want {
		users = append(users, u)
	}
	slices.Sort(users) // deterministic order, for tests and logs
	for _, userID := range users {
		local, err := s.localUser(userID)
		if err != nil || !local {
			continue
		}
		devices := make([]string, 0, len(want[userID]))
		for d := range want[userID] {
			devices = append(devices, d)
		}
		slices.Sort(devices)
		for _, deviceID := range devices {
			alg := want[userID][deviceID]
			var keyID, keyJSON string
			err := s.db.Tx(ctx, func(tx *sql.Tx) error {
				err := tx.QueryRowContext(ctx, claimOTK, userID, deviceID, alg).Scan(&keyID, &keyJSON)
				if !errors.Is(err, sql.ErrNoRows) {
					return err
				}
				err = tx.QueryRowContext(ctx, `UPDATE e2e_fallback_keys SET used = TRUE
					WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 RETURNING key_id, key_json`,
					userID, deviceID, alg).Scan(&keyID, &keyJSON)
				if errors.Is(err, sql.ErrNoRows) {
					keyID = ""
					return nil
				}
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("claim %s key of %s/%s: %w", alg, userID, deviceID, err)
			}
			if keyID == "" {
				continue
			}
			if res.OneTimeKeys[userID] == nil {
				res.OneTimeKeys[userID] = map[string]map[string]json.RawMessage{}
			}
			res.OneTimeKeys[userID][deviceID] = map[string]json.RawMessage{alg + ":" + keyID: json.RawMessage(keyJSON)}
		}
	}
	return res, nil
}
