package keys

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

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
// empty list means every device). Devices without keys and unknown devices
// are left out. Users of other servers are asked over federation (see
// QueryKeysTimeout) with the default timeout.
func (s *Service) QueryKeys(ctx context.Context, requester string, want map[string][]string) (*QueryResult, error) {
	return s.QueryKeysTimeout(ctx, requester, want, DefaultRemoteTimeout)
}

// QueryKeysTimeout is QueryKeys giving other servers timeout to answer.
// Remote users whose device list we follow are answered from the cache;
// the others' servers are asked in parallel, and a server that fails is
// listed in failures under its name (its users with cached devices are
// answered from the cache). Without federation every remote server is a
// failure.
//
// Three queries answer for all local users at once (signatures, device
// keys, cross-signing keys): a client's first query after joining a room
// names every member, and a round trip per user made it scale with the
// room.
func (s *Service) QueryKeysTimeout(ctx context.Context, requester string, want map[string][]string, timeout time.Duration) (*QueryResult, error) {
	res := &QueryResult{DeviceKeys: map[string]map[string]json.RawMessage{}, Failures: map[string]json.RawMessage{},
		MasterKeys: map[string]json.RawMessage{}, SelfSigningKeys: map[string]json.RawMessage{}, UserSigningKeys: map[string]json.RawMessage{}}
	users := make([]string, 0, len(want))
	remote := map[string][]string{}
	for userID := range want {
		if local, err := s.localUser(userID); err == nil && local {
			users = append(users, userID)
			res.DeviceKeys[userID] = map[string]json.RawMessage{}
		} else if err == nil && s.fed != nil {
			remote[userID] = want[userID]
		} else if err == nil {
			remoteFailure(res.Failures, userID)
		}
	}
	var cached []string
	if len(remote) > 0 {
		var err error
		if cached, err = s.queryRemote(ctx, remote, timeout, res); err != nil {
			return nil, err
		}
	}
	for _, u := range cached {
		if res.DeviceKeys[u] == nil {
			res.DeviceKeys[u] = map[string]json.RawMessage{}
		}
	}
	localUsers := users
	users = append(users, cached...)
	if len(users) == 0 {
		return res, nil
	}
	list, _ := json.Marshal(users)
	sigs, err := s.signaturesOf(ctx, string(list), requester)
	if err != nil {
		return nil, err
	}
	if len(localUsers) > 0 {
		localList, _ := json.Marshal(localUsers)
		if err := s.deviceKeysOf(ctx, string(localList), want, sigs, res.DeviceKeys); err != nil {
			return nil, err
		}
	}
	if len(cached) > 0 {
		if err := s.cachedDeviceKeysOf(ctx, cached, want, sigs, res.DeviceKeys); err != nil {
			return nil, err
		}
	}
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys
		WHERE user_id IN (`+s.stringList(1)+`)`, string(list))
	if err != nil {
		return nil, fmt.Errorf("cross-signing keys of %d users: %w", len(users), err)
	}
	defer rows.Close()
	for rows.Next() {
		var userID, typ, js string
		if err := rows.Scan(&userID, &typ, &js); err != nil {
			return nil, fmt.Errorf("cross-signing keys of %d users: %w", len(users), err)
		}
		k, err := parseCrossSigningKey(json.RawMessage(js), userID, typ)
		if err != nil {
			return nil, fmt.Errorf("stored %s key of %s: %w", typ, userID, err)
		}
		obj := make(map[string]json.RawMessage, len(k.obj))
		for f, v := range k.obj {
			obj[f] = v
		}
		mergeSignatures(obj, sigs[userID][k.pub])
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
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cross-signing keys of %d users: %w", len(users), err)
	}
	return res, nil
}

// remoteFailure records, in a /keys/query or /keys/claim answer, that the
// server of a remote user could not be asked: without federation (no
// SetFederation) every remote server is unreachable, as Synapse reports
// one it cannot contact (503 under the server name, the rest of the
// answer intact). A client's timeout has nothing to wait for.
func remoteFailure(failures map[string]json.RawMessage, userID string) {
	_, server, _ := strings.Cut(userID[1:], ":")
	failures[server] = json.RawMessage(`{"status":503,"message":"Federation is not available on this server"}`)
}

// stringList is an SQL subquery yielding the strings of the JSON array
// bound to $n. One parameter whatever the length keeps the statement text
// constant, so it is prepared once (and never hits a placeholder limit).
func (s *Service) stringList(n int) string {
	if s.db.Engine() == storage.Postgres {
		return fmt.Sprintf("SELECT jsonb_array_elements_text($%d::jsonb)", n)
	}
	return fmt.Sprintf("SELECT value FROM json_each($%d)", n)
}

// claimList is an SQL subquery yielding (user_id, device_id, algorithm)
// rows (named so) from the JSON array of three-string arrays bound to $n.
func (s *Service) claimList(n int) string {
	if s.db.Engine() == storage.Postgres {
		return fmt.Sprintf("SELECT r->>0 AS user_id, r->>1 AS device_id, r->>2 AS algorithm FROM jsonb_array_elements($%d::jsonb) r", n)
	}
	return fmt.Sprintf("SELECT json_extract(value, '$[0]') AS user_id, json_extract(value, '$[1]') AS device_id, "+
		"json_extract(value, '$[2]') AS algorithm FROM json_each($%d)", n)
}

// signaturesOf loads the uploaded signatures of the listed users' keys that
// viewer may see (by the target user itself, or by viewer), by target user
// and target key.
func (s *Service) signaturesOf(ctx context.Context, users, viewer string) (map[string]map[string][]Signature, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT target_user_id, target_key_id, signer_user_id, signer_key_id, signature
		FROM e2e_cross_signing_signatures WHERE target_user_id IN (`+s.stringList(1)+`)
		AND (signer_user_id = target_user_id OR signer_user_id = $2)`, users, viewer)
	if err != nil {
		return nil, fmt.Errorf("signatures for %s: %w", viewer, err)
	}
	defer rows.Close()
	out := map[string]map[string][]Signature{}
	for rows.Next() {
		var sg Signature
		if err := rows.Scan(&sg.TargetUser, &sg.TargetKey, &sg.SignerUser, &sg.SignerKey, &sg.Signature); err != nil {
			return nil, fmt.Errorf("signatures for %s: %w", viewer, err)
		}
		if out[sg.TargetUser] == nil {
			out[sg.TargetUser] = map[string][]Signature{}
		}
		out[sg.TargetUser][sg.TargetKey] = append(out[sg.TargetUser][sg.TargetKey], sg)
	}
	return out, rows.Err()
}

// deviceKeysOf loads the listed users' device keys (only the devices want
// names, if it names any) into out, with the devices' display names in
// unsigned, as clients show them.
func (s *Service) deviceKeysOf(ctx context.Context, users string, want map[string][]string,
	sigs map[string]map[string][]Signature, out map[string]map[string]json.RawMessage) error {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT k.user_id, k.device_id, k.key_json, d.display_name FROM e2e_device_keys k
		JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id WHERE k.user_id IN (`+s.stringList(1)+`)`, users)
	if err != nil {
		return fmt.Errorf("device keys: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var userID, deviceID, keyJSON string
		var name sql.NullString
		if err := rows.Scan(&userID, &deviceID, &keyJSON, &name); err != nil {
			return fmt.Errorf("device keys: %w", err)
		}
		if only := want[userID]; len(only) > 0 && !slices.Contains(only, deviceID) {
			continue
		}
		if b, ok := withDisplayName(keyJSON, name); ok && len(sigs[userID][deviceID]) == 0 {
			out[userID][deviceID] = b
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(keyJSON), &obj); err != nil {
			return fmt.Errorf("device keys of %s/%s: %w", userID, deviceID, err)
		}
		mergeSignatures(obj, sigs[userID][deviceID])
		if name.Valid {
			obj["unsigned"], _ = json.Marshal(map[string]string{"device_display_name": name.String})
		}
		out[userID][deviceID], _ = json.Marshal(obj)
	}
	return rows.Err()
}

// ClaimResult is the body of a /keys/claim answer.
type ClaimResult struct {
	OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	Failures    map[string]json.RawMessage                       `json:"failures"`
}

// ClaimKeys is ClaimKeysTimeout with the default timeout for other
// servers.
func (s *Service) ClaimKeys(ctx context.Context, want map[string]map[string]string) (*ClaimResult, error) {
	return s.ClaimKeysTimeout(ctx, want, DefaultRemoteTimeout)
}

// ClaimKeysTimeout hands out one key per requested device and algorithm:
// the device's oldest one-time key, deleted as it is handed out, or else
// its fallback key, which stays (marked used). Devices with neither are
// left out. Keys of remote users are claimed from their servers, in
// parallel, each within timeout; a server that fails is listed in
// failures (every remote server, without federation).
//
// All devices are claimed in one transaction of two statements: a DELETE
// of each device's oldest row RETURNING them, then an UPDATE marking the
// fallback keys of the devices that had none. On PostgreSQL each device's
// row is picked FOR UPDATE SKIP LOCKED (in a lateral subquery, so per
// device): a concurrent claimer that picked the same row first holds its
// lock, so this one takes the next row instead of waiting and then deleting
// nothing; a key is never handed out twice and no claimer falls back while
// unclaimed keys remain. The fallback rows are locked in key order, so two
// claims of overlapping device sets cannot deadlock. SQLite has one
// writer, which serialises claims.
func (s *Service) ClaimKeysTimeout(ctx context.Context, want map[string]map[string]string, timeout time.Duration) (*ClaimResult, error) {
	res := &ClaimResult{OneTimeKeys: map[string]map[string]map[string]json.RawMessage{}, Failures: map[string]json.RawMessage{}}
	var reqs [][3]string
	remote := map[string]map[string]string{}
	for userID, devices := range want {
		if local, err := s.localUser(userID); err != nil || !local {
			if err == nil && s.fed != nil {
				remote[userID] = devices
			} else if err == nil {
				remoteFailure(res.Failures, userID)
			}
			continue
		}
		for deviceID, alg := range devices {
			reqs = append(reqs, [3]string{userID, deviceID, alg})
		}
	}
	if len(remote) > 0 {
		s.claimRemote(ctx, remote, timeout, res)
	}
	if len(reqs) == 0 {
		return res, nil
	}
	// Deterministic order, for tests and logs.
	slices.SortFunc(reqs, func(a, b [3]string) int { return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1]) })
	list, _ := json.Marshal(reqs)

	var claimOTK string
	if s.db.Engine() == storage.Postgres {
		claimOTK = `DELETE FROM e2e_one_time_keys o USING (
			SELECT k.user_id, k.device_id, k.algorithm, k.key_id FROM (` + s.claimList(1) + `) req
			CROSS JOIN LATERAL (SELECT user_id, device_id, algorithm, key_id FROM e2e_one_time_keys t
				WHERE t.user_id = req.user_id AND t.device_id = req.device_id AND t.algorithm = req.algorithm
				ORDER BY ts_added, key_id LIMIT 1 FOR UPDATE SKIP LOCKED) k) p
			WHERE o.user_id = p.user_id AND o.device_id = p.device_id AND o.algorithm = p.algorithm AND o.key_id = p.key_id
			RETURNING o.user_id, o.device_id, o.algorithm, o.key_id, o.key_json`
	} else {
		claimOTK = `DELETE FROM e2e_one_time_keys WHERE (user_id, device_id, algorithm, key_id) IN (
			SELECT req.user_id, req.device_id, req.algorithm, (SELECT t.key_id FROM e2e_one_time_keys t
				WHERE t.user_id = req.user_id AND t.device_id = req.device_id AND t.algorithm = req.algorithm
				ORDER BY t.ts_added, t.key_id LIMIT 1)
			FROM (` + s.claimList(1) + `) req)
			RETURNING user_id, device_id, algorithm, key_id, key_json`
	}
	lock := ""
	if s.db.Engine() == storage.Postgres {
		lock = " FOR UPDATE"
	}
	claimFallback := `UPDATE e2e_fallback_keys SET used = TRUE WHERE (user_id, device_id, algorithm) IN (
		SELECT user_id, device_id, algorithm FROM e2e_fallback_keys WHERE (user_id, device_id, algorithm) IN (` + s.claimList(1) + `)
		ORDER BY user_id, device_id, algorithm` + lock + `)
		RETURNING user_id, device_id, algorithm, key_id, key_json`

	type claimed struct{ userID, deviceID, alg, keyID, keyJSON string }
	var got []claimed
	scan := func(rows *sql.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var c claimed
			if err := rows.Scan(&c.userID, &c.deviceID, &c.alg, &c.keyID, &c.keyJSON); err != nil {
				return err
			}
			got = append(got, c)
		}
		return rows.Err()
	}
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		got = got[:0] // a retried transaction starts over
		rows, err := tx.QueryContext(ctx, claimOTK, string(list))
		if err != nil {
			return err
		}
		if err := scan(rows); err != nil {
			return err
		}
		if len(got) == len(reqs) {
			return nil
		}
		done := make(map[[2]string]bool, len(got))
		for _, c := range got {
			done[[2]string{c.userID, c.deviceID}] = true
		}
		var rest [][3]string
		for _, r := range reqs {
			if !done[[2]string{r[0], r[1]}] {
				rest = append(rest, r)
			}
		}
		restList, _ := json.Marshal(rest)
		rows, err = tx.QueryContext(ctx, claimFallback, string(restList))
		if err != nil {
			return err
		}
		return scan(rows)
	})
	if err != nil {
		return nil, fmt.Errorf("claim keys of %d devices: %w", len(reqs), err)
	}
	for _, c := range got {
		if res.OneTimeKeys[c.userID] == nil {
			res.OneTimeKeys[c.userID] = map[string]map[string]json.RawMessage{}
		}
		res.OneTimeKeys[c.userID][c.deviceID] = map[string]json.RawMessage{c.alg + ":" + c.keyID: json.RawMessage(c.keyJSON)}
	}
	return res, nil
}

// withDisplayName appends the device's display name in unsigned to stored
// device keys (a canonical object, which never holds unsigned) without
// decoding them: a query naming a room's members answers hundreds of
// devices, and decoding and re-encoding each dominated its cost. ok is
// false if keyJSON is not an object.
func withDisplayName(keyJSON string, name sql.NullString) (json.RawMessage, bool) {
	if len(keyJSON) < 2 || keyJSON[0] != '{' || keyJSON[len(keyJSON)-1] != '}' {
		return nil, false
	}
	if !name.Valid {
		return json.RawMessage(keyJSON), true
	}
	n, _ := json.Marshal(name.String)
	b := make([]byte, 0, len(keyJSON)+len(n)+40)
	b = append(b, keyJSON[:len(keyJSON)-1]...)
	if len(keyJSON) > 2 {
		b = append(b, ',')
	}
	b = append(b, `"unsigned":{"device_display_name":`...)
	b = append(b, n...)
	b = append(b, "}}"...)
	return b, true
}
