// Package keys owns end-to-end encryption on the server: device keys,
// one-time and fallback keys (upload, query, claim), the device_lists
// stream that tells clients whose devices changed, and the endpoints under
// /keys.
//
// Device keys are stored only by the device_lists writer (Writer), in the
// same transaction as the stream row announcing the change. Changes made by
// other domains (devices created, renamed, deleted, accounts deactivated;
// deleted devices lose their keys there) are recorded in
// device_lists_outbox inside those domains' transactions and announced by
// the writer when it drains the record (outbox.go), so no change is ever
// committed without its announcement following. One-time and fallback keys
// are not announced, so any process writes them directly; a claim is one atomic DELETE … RETURNING, so two
// processes claiming at once never hand out the same key.
package keys

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// AlgSignedCurve25519 is the one-time key algorithm whose count every
// response carries, zero or not (clients top up when it is low).
const AlgSignedCurve25519 = "signed_curve25519"

// Service is the keys domain of one process.
type Service struct {
	db         *storage.DB
	reg        *streams.Registry
	w          Writer
	serverName string
	log        *slog.Logger
	now        func() time.Time
	// fed asks other servers about their users (SetFederation); nil
	// without federation.
	fed Federation
}

// NewService builds the service; w is the device_lists writer (local,
// remote or sharded).
func NewService(db *storage.DB, reg *streams.Registry, w Writer, serverName string, log *slog.Logger) *Service {
	return &Service{db: db, reg: reg, w: w, serverName: serverName, log: log, now: time.Now}
}

// Upload is the body of POST /keys/upload.
type Upload struct {
	DeviceKeys   json.RawMessage            `json:"device_keys"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
	// The unstable name of fallback_keys (MSC2732), still sent by clients.
	FallbackKeysUnstable map[string]json.RawMessage `json:"org.matrix.msc2732.fallback_keys"`
}

// oneKey is one parsed one-time or fallback key.
type oneKey struct {
	algorithm, keyID string
	json             []byte // canonical
}

// UploadKeys stores a device's keys and returns its one-time key counts.
// Everything is checked before anything is stored.
func (s *Service) UploadKeys(ctx context.Context, userID, deviceID string, up Upload) (map[string]int, error) {
	var deviceKeys []byte
	if len(up.DeviceKeys) > 0 && string(up.DeviceKeys) != "null" {
		var err error
		if deviceKeys, err = CheckDeviceKeys(up.DeviceKeys, userID, deviceID); err != nil {
			return nil, err
		}
	}
	otks, err := parseKeys(up.OneTimeKeys, "one_time_keys")
	if err != nil {
		return nil, err
	}
	fallback := up.FallbackKeys
	if fallback == nil {
		fallback = up.FallbackKeysUnstable
	}
	fbs, err := parseKeys(fallback, "fallback_keys")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, k := range fbs {
		if seen[k.algorithm] {
			return nil, mxhttp.InvalidParam("fallback_keys: more than one %s key", k.algorithm)
		}
		seen[k.algorithm] = true
	}

	if deviceKeys != nil {
		var stored string
		err := s.db.Reader().QueryRowContext(ctx, `SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2`,
			userID, deviceID).Scan(&stored)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("load device keys of %s/%s: %w", userID, deviceID, err)
		}
		// Identical keys again (clients re-upload at every start) change
		// nothing and announce nothing.
		if stored != string(deviceKeys) {
			if err := s.w.Update(ctx, Update{UserID: userID, DeviceKeys: map[string]json.RawMessage{deviceID: deviceKeys}}); err != nil {
				return nil, err
			}
		}
	}
	if len(otks) > 0 || len(fbs) > 0 {
		if err := s.storeKeys(ctx, userID, deviceID, otks, fbs); err != nil {
			return nil, err
		}
	}
	return s.OneTimeKeyCounts(ctx, userID, deviceID)
}

// storeKeys stores one-time keys (a key id already present with the same
// key is a no-op, with another key a 400 and nothing is stored) and fallback
// keys (a new one replaces the algorithm's old one and is unused).
func (s *Service) storeKeys(ctx context.Context, userID, deviceID string, otks, fbs []oneKey) error {
	now := s.now().UnixMilli()
	return s.db.Tx(ctx, func(tx *sql.Tx) error {
		for _, k := range otks {
			res, err := tx.ExecContext(ctx, `INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json, ts_added)
				VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING`,
				userID, deviceID, k.algorithm, k.keyID, string(k.json), now)
			if err != nil {
				return fmt.Errorf("store one-time key: %w", err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 1 {
				continue
			}
			var stored string
			err = tx.QueryRowContext(ctx, `SELECT key_json FROM e2e_one_time_keys
				WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4`,
				userID, deviceID, k.algorithm, k.keyID).Scan(&stored)
			if err != nil {
				return fmt.Errorf("load one-time key: %w", err)
			}
			if stored != string(k.json) {
				return mxhttp.InvalidParam("One time key %s:%s already exists with a different value", k.algorithm, k.keyID)
			}
		}
		for _, k := range fbs {
			_, err := tx.ExecContext(ctx, `INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
				VALUES ($1, $2, $3, $4, $5, FALSE)
				ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = excluded.key_id,
					key_json = excluded.key_json, used = FALSE
				WHERE e2e_fallback_keys.key_id <> excluded.key_id OR e2e_fallback_keys.key_json <> excluded.key_json`,
				userID, deviceID, k.algorithm, k.keyID, string(k.json))
			if err != nil {
				return fmt.Errorf("store fallback key: %w", err)
			}
		}
		return nil
	})
}

// OneTimeKeyCounts counts a device's unclaimed one-time keys per algorithm
// (signed_curve25519 always present).
func (s *Service) OneTimeKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT algorithm, count(*) FROM e2e_one_time_keys
		WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm`, userID, deviceID)
	if err != nil {
		return nil, fmt.Errorf("count one-time keys of %s/%s: %w", userID, deviceID, err)
	}
	defer rows.Close()
	out := map[string]int{AlgSignedCurve25519: 0}
	for rows.Next() {
		var alg string
		var n int
		if err := rows.Scan(&alg, &n); err != nil {
			return nil, fmt.Errorf("count one-time keys of %s/%s: %w", userID, deviceID, err)
		}
		out[alg] = n
	}
	return out, rows.Err()
}

// SyncKeyCounts is OneTimeKeyCounts and UnusedFallbackKeyTypes in one
// round trip: /sync asks both on every response, for every device.
func (s *Service) SyncKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT 0, algorithm, count(*) FROM e2e_one_time_keys
		WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
		UNION ALL
		SELECT 1, algorithm, 0 FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2 AND NOT used`, userID, deviceID)
	if err != nil {
		return nil, nil, fmt.Errorf("key counts of %s/%s: %w", userID, deviceID, err)
	}
	defer rows.Close()
	counts := map[string]int{AlgSignedCurve25519: 0}
	fallback := []string{}
	for rows.Next() {
		var kind, n int
		var alg string
		if err := rows.Scan(&kind, &alg, &n); err != nil {
			return nil, nil, fmt.Errorf("key counts of %s/%s: %w", userID, deviceID, err)
		}
		if kind == 0 {
			counts[alg] = n
		} else {
			fallback = append(fallback, alg)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("key counts of %s/%s: %w", userID, deviceID, err)
	}
	slices.Sort(fallback)
	return counts, fallback, nil
}

// UnusedFallbackKeyTypes lists the algorithms of the device's fallback keys
// that nobody has claimed yet.
func (s *Service) UnusedFallbackKeyTypes(ctx context.Context, userID, deviceID string) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT algorithm FROM e2e_fallback_keys
		WHERE user_id = $1 AND device_id = $2 AND NOT used ORDER BY algorithm`, userID, deviceID)
	if err != nil {
		return nil, fmt.Errorf("fallback keys of %s/%s: %w", userID, deviceID, err)
	}
	out, err := scanStrings(rows)
	if out == nil {
		out = []string{}
	}
	return out, err
}

// CheckDeviceKeys validates an uploaded device_keys object for the
// requester's device and returns its canonical form without "unsigned": the
// user and device must be the requester's, algorithms a list of strings,
// keys must hold the device's ed25519 key, and signatures its valid
// signature by that key. Anything else is 400 M_INVALID_PARAM (M_BAD_JSON
// for the wrong JSON types).
func CheckDeviceKeys(raw json.RawMessage, userID, deviceID string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, mxhttp.BadJSON("device_keys must be an object")
	}
	var dk struct {
		UserID     string                       `json:"user_id"`
		DeviceID   string                       `json:"device_id"`
		Algorithms []string                     `json:"algorithms"`
		Keys       map[string]string            `json:"keys"`
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(raw, &dk); err != nil {
		return nil, mxhttp.BadJSON("device_keys: %v", err)
	}
	if dk.UserID != userID || dk.DeviceID != deviceID {
		return nil, mxhttp.InvalidParam("device_keys: user_id and device_id must be the requester's (%s, %s)", userID, deviceID)
	}
	if len(dk.Algorithms) == 0 {
		return nil, mxhttp.InvalidParam("device_keys: algorithms must list at least one algorithm")
	}
	keyID := "ed25519:" + deviceID
	pub, err := events.DecodeBase64(dk.Keys[keyID])
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, mxhttp.InvalidParam("device_keys: keys must hold the device's ed25519 key %s", keyID)
	}
	delete(obj, "unsigned")
	stored, err := canonicalObject(obj)
	if err != nil {
		return nil, err
	}
	if err := verifySigned(obj, userID, keyID, ed25519.PublicKey(pub)); err != nil {
		return nil, mxhttp.InvalidParam("device_keys: %v", err)
	}
	return stored, nil
}

// verifySigned checks obj's signatures[signer][keyID] against pub over the
// canonical JSON of obj without signatures and unsigned.
func verifySigned(obj map[string]json.RawMessage, signer, keyID string, pub ed25519.PublicKey) error {
	var sigs map[string]map[string]string
	if err := json.Unmarshal(obj["signatures"], &sigs); err != nil {
		return fmt.Errorf("signatures must be an object of objects of strings")
	}
	sig, err := events.DecodeBase64(sigs[signer][keyID])
	if err != nil || sigs[signer][keyID] == "" {
		return fmt.Errorf("no signature by %s %s", signer, keyID)
	}
	unsigned := make(map[string]json.RawMessage, len(obj))
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			unsigned[k] = v
		}
	}
	msg, err := canonicalObject(unsigned)
	if err != nil {
		return err
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("invalid signature by %s %s", signer, keyID)
	}
	return nil
}

func canonicalObject(obj map[string]json.RawMessage) ([]byte, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, mxhttp.BadJSON("%v", err)
	}
	c, err := canonicaljson.Canonicalize(b, true)
	if err != nil {
		return nil, mxhttp.BadJSON("%v", err)
	}
	return c, nil
}

// parseKeys reads one_time_keys / fallback_keys: "algorithm:key_id" to a
// key string (unsigned curve25519) or an object with a "key" string.
func parseKeys(m map[string]json.RawMessage, field string) ([]oneKey, error) {
	out := make([]oneKey, 0, len(m))
	for id, raw := range m {
		alg, keyID, ok := strings.Cut(id, ":")
		if !ok || alg == "" || keyID == "" {
			return nil, mxhttp.InvalidParam("%s: key id %q must be algorithm:key_id", field, id)
		}
		c, err := canonicaljson.Canonicalize(raw, true)
		if err != nil {
			return nil, mxhttp.BadJSON("%s: %s: %v", field, id, err)
		}
		switch c[0] {
		case '"':
		case '{':
			var k struct {
				Key *string `json:"key"`
			}
			if json.Unmarshal(c, &k) != nil || k.Key == nil || *k.Key == "" {
				return nil, mxhttp.BadJSON("%s: %s must have a key string", field, id)
			}
		default:
			return nil, mxhttp.BadJSON("%s: %s must be a string or an object", field, id)
		}
		out = append(out, oneKey{algorithm: alg, keyID: keyID, json: c})
	}
	slices.SortFunc(out, func(a, b oneKey) int { return strings.Compare(a.algorithm+":"+a.keyID, b.algorithm+":"+b.keyID) })
	return out, nil
}
