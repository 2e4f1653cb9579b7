package keys

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

// Cross-signing key types, as /keys/device_signing/upload names them.
const (
	KeyMaster      = "master"
	KeySelfSigning = "self_signing"
	KeyUserSigning = "user_signing"
)

// csKey is a parsed cross-signing key.
type csKey struct {
	pub   string // unpadded base64 public key
	key   ed25519.PublicKey
	obj   map[string]json.RawMessage
	canon []byte // canonical JSON as stored
}

// parseCrossSigningKey checks a cross-signing key object: the owner is
// userID, usage includes usage, and keys holds exactly one ed25519 key whose
// id is "ed25519:" + the key itself.
func parseCrossSigningKey(raw json.RawMessage, userID, usage string) (*csKey, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, mxhttp.BadJSON("%s key must be an object", usage)
	}
	var k struct {
		UserID string            `json:"user_id"`
		Usage  []string          `json:"usage"`
		Keys   map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(raw, &k); err != nil {
		return nil, mxhttp.BadJSON("%s key: %v", usage, err)
	}
	if k.UserID != userID {
		return nil, mxhttp.InvalidParam("%s key: user_id must be %s", usage, userID)
	}
	if !slices.Contains(k.Usage, usage) {
		return nil, mxhttp.InvalidParam("%s key: usage must include %s", usage, usage)
	}
	if len(k.Keys) != 1 {
		return nil, mxhttp.InvalidParam("%s key: keys must hold exactly one key", usage)
	}
	out := &csKey{obj: obj}
	for id, v := range k.Keys {
		pub, err := events.DecodeBase64(v)
		if !strings.HasPrefix(id, "ed25519:") || err != nil || len(pub) != ed25519.PublicKeySize || id != "ed25519:"+v {
			return nil, mxhttp.InvalidParam("%s key: keys must map ed25519:<key> to an ed25519 public key", usage)
		}
		out.pub, out.key = v, pub
	}
	delete(obj, "unsigned")
	c, err := canonicalObject(obj)
	if err != nil {
		return nil, err
	}
	out.canon = c
	return out, nil
}

// storedCrossSigningKeys loads a user's cross-signing keys by type.
func (s *Service) storedCrossSigningKeys(ctx context.Context, q storage.Querier, userID string) (map[string]*csKey, error) {
	rows, err := q.QueryContext(ctx, `SELECT key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("cross-signing keys of %s: %w", userID, err)
	}
	defer rows.Close()
	out := map[string]*csKey{}
	for rows.Next() {
		var typ, js string
		if err := rows.Scan(&typ, &js); err != nil {
			return nil, fmt.Errorf("cross-signing keys of %s: %w", userID, err)
		}
		k, err := parseCrossSigningKey(json.RawMessage(js), userID, typ)
		if err != nil {
			return nil, fmt.Errorf("stored %s key of %s: %w", typ, userID, err)
		}
		out[typ] = k
	}
	return out, rows.Err()
}

// SigningKeysUpload is the body of /keys/device_signing/upload (auth aside).
type SigningKeysUpload struct {
	MasterKey      json.RawMessage `json:"master_key"`
	SelfSigningKey json.RawMessage `json:"self_signing_key"`
	UserSigningKey json.RawMessage `json:"user_signing_key"`
}

// CheckSigningKeys validates an upload of cross-signing keys against the
// stored ones and returns the keys that change, and whether the upload
// replaces existing keys (then the caller must require user-interactive
// auth; a first upload needs none, MSC3967). The self-signing and
// user-signing keys must be signed by the (new or stored) master key.
func (s *Service) CheckSigningKeys(ctx context.Context, userID string, up SigningKeysUpload) (map[string]json.RawMessage, bool, error) {
	stored, err := s.storedCrossSigningKeys(ctx, s.db.Reader(), userID)
	if err != nil {
		return nil, false, err
	}
	given := map[string]json.RawMessage{KeyMaster: up.MasterKey, KeySelfSigning: up.SelfSigningKey, KeyUserSigning: up.UserSigningKey}
	parsed := map[string]*csKey{}
	for typ, raw := range given {
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		k, err := parseCrossSigningKey(raw, userID, typ)
		if err != nil {
			return nil, false, err
		}
		parsed[typ] = k
	}
	if len(parsed) == 0 {
		return nil, false, mxhttp.MissingParam("No cross-signing keys given")
	}
	master := parsed[KeyMaster]
	if master == nil {
		master = stored[KeyMaster]
	}
	if master == nil {
		return nil, false, mxhttp.MissingParam("No master key given or stored")
	}
	for _, typ := range []string{KeySelfSigning, KeyUserSigning} {
		k := parsed[typ]
		if k == nil {
			continue
		}
		if k.pub == master.pub {
			return nil, false, mxhttp.InvalidParam("%s key must differ from the master key", typ)
		}
		if err := verifySigned(k.obj, userID, "ed25519:"+master.pub, master.key); err != nil {
			return nil, false, mxhttp.WithCode(400, "M_INVALID_SIGNATURE", "%s key: %v", typ, err)
		}
	}
	changes := map[string]json.RawMessage{}
	replaces := false
	for typ, k := range parsed {
		// The same key again (clients re-upload, with fresh signatures by
		// the uploading device) changes nothing and needs no auth.
		if old := stored[typ]; old != nil && sameSignedContent(k.obj, old.canon) {
			continue
		}
		changes[typ] = k.canon
		if stored[KeyMaster] != nil {
			replaces = true
		}
	}
	return changes, replaces, nil
}

// StoreSigningKeys stores checked cross-signing keys and announces them.
func (s *Service) StoreSigningKeys(ctx context.Context, userID string, changes map[string]json.RawMessage) error {
	if len(changes) == 0 {
		return nil
	}
	return s.w.Update(ctx, Update{UserID: userID, CrossSigningKeys: changes})
}

// UploadSignatures checks and stores signatures the requester made: of its
// own devices (by its self-signing key), of its own master key (by one of
// its devices), and of other users' master keys (by its user-signing key).
// The answer's failures map says, per user and key, what was refused.
func (s *Service) UploadSignatures(ctx context.Context, requester string, body map[string]map[string]json.RawMessage) (map[string]map[string]any, error) {
	failures := map[string]map[string]any{}
	fail := func(user, key, code, format string, args ...any) {
		if failures[user] == nil {
			failures[user] = map[string]any{}
		}
		failures[user][key] = map[string]string{"errcode": code, "error": fmt.Sprintf(format, args...)}
	}
	own, err := s.storedCrossSigningKeys(ctx, s.db.Reader(), requester)
	if err != nil {
		return nil, err
	}
	updates := map[string]*Update{} // by the user whose list announces it
	add := func(announce, device string, sg Signature) {
		u := updates[announce]
		if u == nil {
			u = &Update{UserID: announce}
			updates[announce] = u
		}
		if !slices.Contains(u.DeviceIDs, device) {
			u.DeviceIDs = append(u.DeviceIDs, device)
		}
		u.Signatures = append(u.Signatures, sg)
	}
	for target, objs := range body {
		local, err := s.localUser(target)
		if err != nil || !local {
			for keyID := range objs {
				fail(target, keyID, "M_INVALID_PARAM", "unknown or remote user")
			}
			continue
		}
		theirs := own
		if target != requester {
			if theirs, err = s.storedCrossSigningKeys(ctx, s.db.Reader(), target); err != nil {
				return nil, err
			}
		}
		for keyID, raw := range objs {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
				fail(target, keyID, "M_BAD_JSON", "signed object must be an object")
				continue
			}
			var sigs map[string]map[string]string
			if json.Unmarshal(obj["signatures"], &sigs) != nil {
				fail(target, keyID, "M_BAD_JSON", "signatures must be an object of objects of strings")
				continue
			}
			// The stored object the signature must be over.
			var storedCanon []byte
			var signerKeyIDs []string // candidate signing keys of the requester
			var announce, device string
			switch {
			case target == requester && theirs[KeyMaster] != nil && keyID == theirs[KeyMaster].pub:
				storedCanon = theirs[KeyMaster].canon
				// A device signs its user's master key.
				for k := range sigs[requester] {
					if strings.HasPrefix(k, "ed25519:") && k != "ed25519:"+keyID {
						signerKeyIDs = append(signerKeyIDs, k)
					}
				}
				announce, device = requester, ""
			case target == requester:
				var js string
				err := s.db.Reader().QueryRowContext(ctx, `SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2`,
					target, keyID).Scan(&js)
				if errors.Is(err, sql.ErrNoRows) {
					fail(target, keyID, "M_NOT_FOUND", "no such device or key")
					continue
				} else if err != nil {
					return nil, fmt.Errorf("device keys of %s/%s: %w", target, keyID, err)
				}
				storedCanon = []byte(js)
				if own[KeySelfSigning] == nil {
					fail(target, keyID, "M_INVALID_SIGNATURE", "no self-signing key to sign devices with")
					continue
				}
				signerKeyIDs = []string{"ed25519:" + own[KeySelfSigning].pub}
				announce, device = requester, keyID
			default:
				if theirs[KeyMaster] == nil || keyID != theirs[KeyMaster].pub {
					fail(target, keyID, "M_NOT_FOUND", "only another user's master key can be signed")
					continue
				}
				if own[KeyUserSigning] == nil {
					fail(target, keyID, "M_INVALID_SIGNATURE", "no user-signing key to sign users with")
					continue
				}
				storedCanon = theirs[KeyMaster].canon
				signerKeyIDs = []string{"ed25519:" + own[KeyUserSigning].pub}
				// The signer's own devices learn of their user's new trust.
				announce, device = requester, ""
			}
			if !sameSignedContent(obj, storedCanon) {
				fail(target, keyID, "M_INVALID_PARAM", "signed object differs from the stored key")
				continue
			}
			var found *Signature
			for _, sk := range signerKeyIDs {
				pub, err := s.signerKey(ctx, requester, sk, own)
				if err != nil {
					return nil, err
				}
				if pub == nil {
					continue
				}
				if verifySigned(obj, requester, sk, pub) == nil {
					found = &Signature{TargetUser: target, TargetKey: keyID, SignerUser: requester, SignerKey: sk,
						Signature: sigs[requester][sk]}
					break
				}
			}
			if found == nil {
				fail(target, keyID, "M_INVALID_SIGNATURE", "no valid signature by an appropriate key of %s", requester)
				continue
			}
			add(announce, device, *found)
		}
	}
	for _, u := range updates {
		if err := s.w.Update(ctx, *u); err != nil {
			return nil, err
		}
	}
	return failures, nil
}

// signerKey resolves one of the requester's signing key ids: a
// cross-signing key ("ed25519:<public key>") or a device key
// ("ed25519:<device id>"). nil when unknown.
func (s *Service) signerKey(ctx context.Context, userID, keyID string, own map[string]*csKey) (ed25519.PublicKey, error) {
	name := strings.TrimPrefix(keyID, "ed25519:")
	for _, k := range own {
		if k.pub == name {
			return k.key, nil
		}
	}
	var js string
	err := s.db.Reader().QueryRowContext(ctx, `SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2`,
		userID, name).Scan(&js)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("device keys of %s/%s: %w", userID, name, err)
	}
	var dk struct {
		Keys map[string]string `json:"keys"`
	}
	if json.Unmarshal([]byte(js), &dk) != nil {
		return nil, nil
	}
	pub, err := events.DecodeBase64(dk.Keys[keyID])
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, nil
	}
	return pub, nil
}

// sameSignedContent reports whether obj is the stored object, signatures
// and unsigned aside.
func sameSignedContent(obj map[string]json.RawMessage, storedCanon []byte) bool {
	var stored map[string]json.RawMessage
	if json.Unmarshal(storedCanon, &stored) != nil {
		return false
	}
	strip := func(m map[string]json.RawMessage) []byte {
		c := make(map[string]json.RawMessage, len(m))
		for k, v := range m {
			if k != "signatures" && k != "unsigned" {
				c[k] = v
			}
		}
		b, err := canonicalObject(c)
		if err != nil {
			return nil
		}
		return b
	}
	a, b := strip(obj), strip(stored)
	return a != nil && string(a) == string(b)
}

// mergeSignatures adds sigs to obj's signatures.
func mergeSignatures(obj map[string]json.RawMessage, sigs []Signature) {
	if len(sigs) == 0 {
		return
	}
	var all map[string]map[string]string
	_ = json.Unmarshal(obj["signatures"], &all)
	if all == nil {
		all = map[string]map[string]string{}
	}
	for _, sg := range sigs {
		if all[sg.SignerUser] == nil {
			all[sg.SignerUser] = map[string]string{}
		}
		all[sg.SignerUser][sg.SignerKey] = sg.Signature
	}
	obj["signatures"], _ = json.Marshal(all)
}
