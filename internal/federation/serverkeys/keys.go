// Package serverkeys owns servers' signing keys over federation: our key
// server (GET /_matrix/key/v2/server), the keyring that finds other
// servers' verification keys (a small in-process cache over a database
// table every worker shares, filled from the servers themselves or from
// trusted notaries), our notary (/_matrix/key/v2/query), and the checks of
// the signatures an event must carry.
//
// Outbound HTTP is not done here: the keyring is handed a Getter and a
// Poster (implemented by the federation client, which resolves server names,
// checks TLS, applies the IP range blacklist and bounds response sizes).
package serverkeys

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
)

// Getter fetches a federation path from a server, without request signing
// (key endpoints are unauthenticated), and decodes the JSON answer into out.
// Implementations bound the answer's size (MaxResponseBytes is enough for
// any key answer) and the time taken.
type Getter interface {
	GetJSON(ctx context.Context, serverName, path string, out any) error
}

// Poster POSTs body as JSON to a server's path (POST /_matrix/key/v2/query
// to a notary) and decodes the answer into out, with the same bounds as
// Getter.
type Poster interface {
	PostJSON(ctx context.Context, serverName, path string, body, out any) error
}

// VerifyKeyFinder finds the key a server signed with. The federation
// client's inbound request verifier declares the same interface.
type VerifyKeyFinder interface {
	VerifyKey(ctx context.Context, serverName, keyID string, atTS int64) (ed25519.PublicKey, error)
}

// MaxResponseBytes bounds one key answer: a server's keys take a few hundred
// bytes, and a notary's batch answer is refused above this too.
const MaxResponseBytes = 1 << 20

// Paths of the key API.
const (
	PathServer = "/_matrix/key/v2/server"
	PathQuery  = "/_matrix/key/v2/query"
)

// maxKeysPerResponse bounds how many keys one answer may list, so a server
// cannot fill the shared cache with junk.
const maxKeysPerResponse = 64

// Error kinds, for errors.Is.
var (
	// ErrKeyNotFound: neither the cache nor any source knows the key.
	ErrKeyNotFound = errors.New("server key not found")
	// ErrKeyNotValid: the key is known but was not valid at the time asked
	// (its valid_until_ts, or for an old key its expired_ts, is earlier).
	ErrKeyNotValid = errors.New("server key not valid at that time")
	// ErrBadResponse: a key answer was malformed, unsigned, wrongly signed
	// or about another server.
	ErrBadResponse = errors.New("bad key response")
)

// Response is a parsed key answer of one server: the body of
// GET /_matrix/key/v2/server, or one entry of a notary's server_keys.
type Response struct {
	ServerName    string
	ValidUntilTS  int64
	VerifyKeys    map[string]ed25519.PublicKey
	OldVerifyKeys map[string]OldKey
	// Raw is the answer as received, canonical JSON.
	Raw []byte
}

// OldKey is an entry of old_verify_keys.
type OldKey struct {
	Key       ed25519.PublicKey
	ExpiredTS int64
}

type wireKey struct {
	Key       string `json:"key"`
	ExpiredTS *int64 `json:"expired_ts,omitempty"`
}

type wireResponse struct {
	ServerName    string                       `json:"server_name"`
	ValidUntilTS  *int64                       `json:"valid_until_ts"`
	VerifyKeys    map[string]wireKey           `json:"verify_keys"`
	OldVerifyKeys map[string]wireKey           `json:"old_verify_keys"`
	Signatures    map[string]map[string]string `json:"signatures"`
}

// ParseResponse parses and checks the shape of a key answer (not its
// signatures: see CheckSelfSigned). Keys of algorithms other than ed25519
// are ignored, as the spec allows.
func ParseResponse(raw []byte) (*Response, error) {
	if len(raw) > MaxResponseBytes {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadResponse, len(raw))
	}
	canon, err := canonicaljson.Canonicalize(raw, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	raw = canon
	var w wireResponse
	if err := json.Unmarshal(raw, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	if w.ServerName == "" {
		return nil, fmt.Errorf("%w: no server_name", ErrBadResponse)
	}
	if w.ValidUntilTS == nil || *w.ValidUntilTS <= 0 {
		return nil, fmt.Errorf("%w: %s: no valid_until_ts", ErrBadResponse, w.ServerName)
	}
	if len(w.VerifyKeys)+len(w.OldVerifyKeys) > maxKeysPerResponse {
		return nil, fmt.Errorf("%w: %s lists %d keys", ErrBadResponse, w.ServerName, len(w.VerifyKeys)+len(w.OldVerifyKeys))
	}
	r := &Response{ServerName: w.ServerName, ValidUntilTS: *w.ValidUntilTS,
		VerifyKeys: map[string]ed25519.PublicKey{}, OldVerifyKeys: map[string]OldKey{}, Raw: raw}
	for id, k := range w.VerifyKeys {
		if !strings.HasPrefix(id, "ed25519:") {
			continue
		}
		pub, err := decodeKey(k.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: verify_keys.%s: %w", ErrBadResponse, w.ServerName, id, err)
		}
		r.VerifyKeys[id] = pub
	}
	for id, k := range w.OldVerifyKeys {
		if !strings.HasPrefix(id, "ed25519:") {
			continue
		}
		pub, err := decodeKey(k.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: old_verify_keys.%s: %w", ErrBadResponse, w.ServerName, id, err)
		}
		if k.ExpiredTS == nil {
			return nil, fmt.Errorf("%w: %s: old_verify_keys.%s: no expired_ts", ErrBadResponse, w.ServerName, id)
		}
		r.OldVerifyKeys[id] = OldKey{Key: pub, ExpiredTS: *k.ExpiredTS}
	}
	return r, nil
}

func decodeKey(s string) (ed25519.PublicKey, error) {
	b, err := events.DecodeBase64(s)
	if err != nil {
		return nil, err
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("key has %d bytes, want %d", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// CheckSelfSigned checks that the answer is signed by its own server with
// at least one of the keys it lists in verify_keys, and that every such
// signature is valid (a signature by a key it does not list, say a
// notary's, is not its business here).
func (r *Response) CheckSelfSigned() error {
	return checkSignedBy(r.Raw, r.ServerName, r.VerifyKeys)
}

// checkSignedBy checks raw's signatures by server with the given keys: all
// those present must verify, and there must be at least one.
func checkSignedBy(raw []byte, server string, keys map[string]ed25519.PublicKey) error {
	var w struct {
		Signatures map[string]map[string]json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(raw, &w); err != nil {
		return fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	verified := false
	for id := range w.Signatures[server] {
		pub, ok := keys[id]
		if !ok {
			continue
		}
		if err := events.VerifyJSON(raw, server, id, pub); err != nil {
			return fmt.Errorf("%w: %w", ErrBadResponse, err)
		}
		verified = true
	}
	if !verified {
		return fmt.Errorf("%w: not signed by %s with a key it lists", ErrBadResponse, server)
	}
	return nil
}
