package serverkeys

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"fmt"

	"ganglion/internal/events"
	"ganglion/internal/storage"
)

// maxKeyValidityMS is the spec's cap on how far ahead a fetched key counts
// as valid: the lesser of valid_until_ts and seven days after the fetch.
const maxKeyValidityMS = 7 * 24 * 60 * 60 * 1000

// Store is the server_keys table: the key cache every worker shares.
type Store struct {
	db *storage.DB
}

// NewStore wraps db.
func NewStore(db *storage.DB) *Store { return &Store{db: db} }

// StoredKey is one cached key.
type StoredKey struct {
	ServerName string
	KeyID      string
	Key        ed25519.PublicKey
	// ValidUntilTS: the key verifies signatures made up to this time.
	ValidUntilTS int64
	// ResponseValidUntilTS and AddedTS say how fresh the answer it came in
	// is (the notary refetches past half its life).
	ResponseValidUntilTS int64
	AddedTS              int64
	FromServer           string
	// KeyJSON is the whole answer as received.
	KeyJSON []byte
}

// Put stores every key of a verified answer, replacing what the cache had
// for those key ids unless that came in a newer answer (a notary may relay
// an older answer than one we fetched directly). fromServer is who served
// it (the server or a notary), addedTS when.
func (s *Store) Put(ctx context.Context, r *Response, fromServer string, addedTS int64) error {
	validUntil := min(r.ValidUntilTS, addedTS+maxKeyValidityMS)
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		put := func(id string, key ed25519.PublicKey, until int64) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO server_keys
				(server_name, key_id, verify_key, valid_until_ts, response_valid_until_ts, added_ts, from_server, key_json)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
				ON CONFLICT (server_name, key_id) DO UPDATE SET
				verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts,
				response_valid_until_ts = excluded.response_valid_until_ts, added_ts = excluded.added_ts,
				from_server = excluded.from_server, key_json = excluded.key_json
				WHERE excluded.response_valid_until_ts >= server_keys.response_valid_until_ts`,
				r.ServerName, id, events.EncodeBase64(key), until, r.ValidUntilTS, addedTS, fromServer, string(r.Raw))
			return err
		}
		for id, k := range r.VerifyKeys {
			if err := put(id, k, validUntil); err != nil {
				return err
			}
		}
		for id, k := range r.OldVerifyKeys {
			if _, current := r.VerifyKeys[id]; current {
				continue
			}
			if err := put(id, k.Key, k.ExpiredTS); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store keys of %s from %s: %w", r.ServerName, fromServer, err)
	}
	return nil
}

const storedKeyColumns = `server_name, key_id, verify_key, valid_until_ts, response_valid_until_ts, added_ts, from_server, key_json`

func scanStoredKey(row interface{ Scan(...any) error }) (StoredKey, error) {
	var k StoredKey
	var key, keyJSON string
	if err := row.Scan(&k.ServerName, &k.KeyID, &key, &k.ValidUntilTS, &k.ResponseValidUntilTS, &k.AddedTS, &k.FromServer, &keyJSON); err != nil {
		return k, err
	}
	pub, err := decodeKey(key)
	if err != nil {
		return k, fmt.Errorf("cached key %s of %s: %w", k.KeyID, k.ServerName, err)
	}
	k.Key, k.KeyJSON = pub, []byte(keyJSON)
	return k, nil
}

// Key returns the cached key, or ok false.
func (s *Store) Key(ctx context.Context, server, keyID string) (k StoredKey, ok bool, err error) {
	k, err = scanStoredKey(s.db.Reader().QueryRowContext(ctx,
		`SELECT `+storedKeyColumns+` FROM server_keys WHERE server_name = $1 AND key_id = $2`, server, keyID))
	if errors.Is(err, sql.ErrNoRows) {
		return StoredKey{}, false, nil
	}
	if err != nil {
		return StoredKey{}, false, fmt.Errorf("load key %s of %s: %w", keyID, server, err)
	}
	return k, true, nil
}

// Keys returns every cached key of server, by key id.
func (s *Store) Keys(ctx context.Context, server string) ([]StoredKey, error) {
	rows, err := s.db.Reader().QueryContext(ctx,
		`SELECT `+storedKeyColumns+` FROM server_keys WHERE server_name = $1 ORDER BY key_id`, server)
	if err != nil {
		return nil, fmt.Errorf("load keys of %s: %w", server, err)
	}
	defer rows.Close()
	var out []StoredKey
	for rows.Next() {
		k, err := scanStoredKey(rows)
		if err != nil {
			return nil, fmt.Errorf("load keys of %s: %w", server, err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load keys of %s: %w", server, err)
	}
	return out, nil
}
