package events

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"ganglion/internal/canonicaljson"
)

// SignJSON signs any JSON object (federation request, key response, event
// template) as the spec's "Signing JSON" describes: the signature covers the
// canonical object without "signatures" and "unsigned", and is added under
// signatures.<serverName>.<key.ID> next to any existing signatures. The
// result is canonical JSON. For events use SignEvent, whose signature covers
// the redacted form.
func SignJSON(raw []byte, serverName string, key SigningKey) ([]byte, error) {
	if err := checkSigner(serverName, key); err != nil {
		return nil, fmt.Errorf("sign json: %w", err)
	}
	o, err := lenientObject(raw)
	if err != nil {
		return nil, fmt.Errorf("sign json: %w", err)
	}
	sig := ed25519.Sign(key.Private, o.without("signatures", "unsigned").encode())
	if o, err = withSignature(o, serverName, key.ID, sig); err != nil {
		return nil, fmt.Errorf("sign json: %w", err)
	}
	return o.encode(), nil
}

// VerifyJSON checks serverName's signature with keyID over raw.
func VerifyJSON(raw []byte, serverName, keyID string, pub ed25519.PublicKey) error {
	o, err := lenientObject(raw)
	if err != nil {
		return fmt.Errorf("verify json signature of %s: %w", serverName, err)
	}
	if err := verifyObject(o, serverName, keyID, pub); err != nil {
		return fmt.Errorf("verify json signature of %s: %w", serverName, err)
	}
	return nil
}

// SignEvent adds serverName's signature over the redacted event, keeping
// existing hashes and signatures: used both for events this server creates
// (after AddContentHash) and to co-sign events of others (send_join).
func SignEvent(raw []byte, rv *RoomVersion, serverName string, key SigningKey) ([]byte, error) {
	if rv == nil {
		return nil, errors.New("sign event: nil room version")
	}
	if err := checkSigner(serverName, key); err != nil {
		return nil, fmt.Errorf("sign event: %w", err)
	}
	canon, err := canonicaljson.Canonicalize(raw, rv.StrictCanonicalJSON)
	if err != nil {
		return nil, fmt.Errorf("sign event: %w: %w", ErrMalformedEvent, err)
	}
	o, err := parseObject(canon)
	if err != nil {
		return nil, fmt.Errorf("sign event: %w: %w", ErrMalformedEvent, err)
	}
	o, _, err = signEventObject(o, rv, serverName, key)
	if err != nil {
		return nil, fmt.Errorf("sign event: %w", err)
	}
	return o.encode(), nil
}

// signEventObject also returns the bytes it signed, which for an event whose
// hashes are final are exactly the reference hash input.
func signEventObject(o object, rv *RoomVersion, serverName string, key SigningKey) (object, []byte, error) {
	r, err := redactObject(o, rv)
	if err != nil {
		return nil, nil, err
	}
	signed := r.without("signatures", "unsigned").encode()
	o, err = withSignature(o, serverName, key.ID, ed25519.Sign(key.Private, signed))
	if err != nil {
		return nil, nil, err
	}
	return o, signed, nil
}

// VerifyEventSignature checks serverName's signature with keyID over the
// redacted event (so that redacted events stay verifiable). Which servers
// must have signed is the caller's business (sender's server; for v1/v2 also
// the event id's server; for restricted joins the authorising server).
func VerifyEventSignature(e *Event, serverName, keyID string, pub ed25519.PublicKey) error {
	o, err := parseObject(e.raw)
	if err != nil {
		return fmt.Errorf("verify signature of %s by %s: %w", e.id, serverName, err)
	}
	r, err := redactObject(o, e.version)
	if err != nil {
		return fmt.Errorf("verify signature of %s by %s: %w", e.id, serverName, err)
	}
	if err := verifyObject(r, serverName, keyID, pub); err != nil {
		return fmt.Errorf("verify signature of %s by %s: %w", e.id, serverName, err)
	}
	return nil
}

func checkSigner(serverName string, key SigningKey) error {
	if serverName == "" || !utf8.ValidString(serverName) {
		return fmt.Errorf("invalid server name %q", serverName)
	}
	return key.validate()
}

// lenientObject canonicalises raw leniently (so that we verify exactly what a
// Synapse origin signed, floats included) and splits it.
func lenientObject(raw []byte) (object, error) {
	canon, err := canonicaljson.Canonicalize(raw, false)
	if err != nil {
		return nil, err
	}
	return parseObject(canon)
}

func withSignature(o object, serverName, keyID string, sig []byte) (object, error) {
	sigs := object{}
	if v, ok := o.get("signatures"); ok {
		var err error
		if sigs, err = parseObject(v); err != nil {
			return nil, fmt.Errorf("signatures: %w", err)
		}
	}
	server := object{}
	if v, ok := sigs.get(objectKey(serverName)); ok {
		var err error
		if server, err = parseObject(v); err != nil {
			return nil, fmt.Errorf("signatures of %s: %w", serverName, err)
		}
	}
	server = server.with(objectKey(keyID), quote(EncodeBase64(sig)))
	sigs = sigs.with(objectKey(serverName), server.encode())
	return o.with("signatures", sigs.encode()), nil
}

func verifyObject(o object, serverName, keyID string, pub ed25519.PublicKey) error {
	if !strings.HasPrefix(keyID, "ed25519:") {
		return fmt.Errorf("key %q: unsupported algorithm", keyID)
	}
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("key %s: public key has %d bytes, want %d", keyID, len(pub), ed25519.PublicKeySize)
	}
	v, ok := o.get("signatures")
	if !ok {
		return fmt.Errorf("%w: no signatures", ErrSignatureMissing)
	}
	sigs, err := parseObject(v)
	if err != nil {
		return fmt.Errorf("%w: signatures: %w", ErrSignatureInvalid, err)
	}
	if v, ok = sigs.get(objectKey(serverName)); !ok {
		return fmt.Errorf("%w: none from %s", ErrSignatureMissing, serverName)
	}
	server, err := parseObject(v)
	if err != nil {
		return fmt.Errorf("%w: signatures of %s: %w", ErrSignatureInvalid, serverName, err)
	}
	if v, ok = server.get(objectKey(keyID)); !ok {
		return fmt.Errorf("%w: none with key %s", ErrSignatureMissing, keyID)
	}
	s, ok := unquote(v)
	if !ok {
		return fmt.Errorf("%w: key %s: not a string", ErrSignatureInvalid, keyID)
	}
	sig, err := DecodeBase64(s)
	if err != nil {
		return fmt.Errorf("%w: key %s: %w", ErrSignatureInvalid, keyID, err)
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, o.without("signatures", "unsigned").encode(), sig) {
		return fmt.Errorf("%w: key %s", ErrSignatureInvalid, keyID)
	}
	return nil
}

// objectKey is the form in which object stores the key s.
func objectKey(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			q := quote(s)
			return string(q[1 : len(q)-1])
		}
	}
	return s
}
