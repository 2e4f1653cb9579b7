package eventauth

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
)

// checkThirdPartyInvite is the invite rule for content.third_party_invite:
// the invite turns an m.room.third_party_invite (an invitation to an email
// address or similar) into a membership, proven by an identity server's
// signature over {mxid, token, …} with a key the original invite published.
// The target-is-banned check has already been made.
//
// Whether the identity server has since revoked the key (key_validity_url)
// needs I/O and is left to the caller, as in Synapse.
func checkThirdPartyInvite(ev *events.Event, target string, raw json.RawMessage, auth AuthEvents) error {
	tpi, ok := objectOf(raw)
	if !ok {
		return reject("third_party_invite is not an object")
	}
	signedRaw, present := tpi["signed"]
	if !present {
		return reject("third_party_invite has no signed property")
	}
	signed, ok := objectOf(signedRaw)
	if !ok {
		return reject("third_party_invite.signed is not an object")
	}
	mxid, ok1 := stringField(signed, "mxid")
	token, ok2 := stringField(signed, "token")
	if !ok1 || !ok2 {
		return reject("third_party_invite.signed needs mxid and token")
	}
	if mxid != target {
		return reject("third_party_invite.signed.mxid does not match state_key")
	}
	inviteEv := auth.Get(typeThirdPartyInvite, token)
	if inviteEv == nil {
		return reject("no m.room.third_party_invite for the token")
	}
	if inviteEv.Sender() != ev.Sender() {
		return reject("sender did not send the m.room.third_party_invite")
	}

	keys := publicKeysOf(inviteEv)
	if len(keys) == 0 {
		return reject("m.room.third_party_invite has no usable public key")
	}
	sigs := signaturesOf(signed)
	if len(sigs) == 0 {
		return reject("third_party_invite.signed has no ed25519 signatures")
	}
	msg, err := signedBytes(signed)
	if err != nil {
		return reject("third_party_invite.signed: " + err.Error())
	}
	// The spec allows when any signature matches any key. Synapse stops at
	// the first ed25519 signature per key, which only differs for bundles
	// carrying several signatures of which an early one is bad.
	for _, key := range keys {
		for _, sig := range sigs {
			if ed25519.Verify(key, msg, sig) {
				return nil
			}
		}
	}
	return reject("no third_party_invite signature matches the invite's public keys")
}

// publicKeysOf collects the ed25519 keys of an m.room.third_party_invite:
// content.public_key and every public_keys[].public_key. Keys that do not
// decode to 32 bytes cannot verify anything and are skipped.
func publicKeysOf(inviteEv *events.Event) []ed25519.PublicKey {
	content, ok := objectOf(inviteEv.Content())
	if !ok {
		return nil
	}
	var keys []ed25519.PublicKey
	add := func(s string) {
		if b, ok := decodeBase64(s); ok && len(b) == ed25519.PublicKeySize {
			keys = append(keys, ed25519.PublicKey(b))
		}
	}
	if s, ok := stringField(content, "public_key"); ok {
		add(s)
	}
	var list []json.RawMessage
	if raw, present := content["public_keys"]; present && json.Unmarshal(raw, &list) == nil {
		for _, item := range list {
			if obj, ok := objectOf(item); ok {
				if s, ok := stringField(obj, "public_key"); ok {
					add(s)
				}
			}
		}
	}
	return keys
}

// signaturesOf returns every well-formed ed25519 signature in
// signed.signatures, in a deterministic order. The server name a signature
// is filed under does not matter: the key comes from the invite event.
func signaturesOf(signed map[string]json.RawMessage) [][]byte {
	var byServer map[string]map[string]json.RawMessage
	if raw, ok := signed["signatures"]; !ok || json.Unmarshal(raw, &byServer) != nil {
		return nil
	}
	var sigs [][]byte
	for _, server := range sortedKeys(byServer) {
		for _, keyID := range sortedKeys(byServer[server]) {
			if !strings.HasPrefix(keyID, "ed25519:") {
				continue
			}
			s, ok := stringField(byServer[server], keyID)
			if !ok {
				continue
			}
			if b, ok := decodeBase64(s); ok && len(b) == ed25519.SignatureSize {
				sigs = append(sigs, b)
			}
		}
	}
	return sigs
}

// signedBytes is what the identity server signed: the canonical JSON of
// signed without "signatures" and "unsigned".
func signedBytes(signed map[string]json.RawMessage) ([]byte, error) {
	stripped := make(map[string]json.RawMessage, len(signed))
	for k, v := range signed {
		if k != "signatures" && k != "unsigned" {
			stripped[k] = v
		}
	}
	return canonicaljson.Marshal(stripped)
}

// decodeBase64 accepts padded or unpadded, standard or URL-safe base64:
// the spec says unpadded standard, but identity servers and clients have
// produced all four.
func decodeBase64(s string) ([]byte, bool) {
	s = strings.TrimRight(s, "=")
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, true
	}
	if b, err := base64.RawURLEncoding.DecodeString(s); err == nil {
		return b, true
	}
	return nil, false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
