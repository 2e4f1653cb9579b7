package events

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"ganglion/internal/canonicaljson"
)

// ContentHash is the sha256 of the canonical event without "unsigned",
// "signatures" and "hashes", exactly the keys the spec names. (Synapse also
// drops legacy top-level "age_ts", "outlier" and "destinations"; no current
// server sends those.) raw is canonicalised leniently, which gives the same
// bytes as strict mode for every event that strict mode accepts.
func ContentHash(raw []byte) ([]byte, error) {
	canon, err := canonicaljson.Canonicalize(raw, false)
	if err != nil {
		return nil, fmt.Errorf("content hash: %w", err)
	}
	o, err := parseObject(canon)
	if err != nil {
		return nil, fmt.Errorf("content hash: %w", err)
	}
	return contentHash(o), nil
}

func contentHash(o object) []byte {
	sum := sha256.Sum256(o.without("unsigned", "signatures", "hashes").encode())
	return sum[:]
}

// AddContentHash sets hashes.sha256 of the event raw, keeping hashes under
// other algorithms, and returns the canonical result.
func AddContentHash(raw []byte) ([]byte, error) {
	canon, err := canonicaljson.Canonicalize(raw, false)
	if err != nil {
		return nil, fmt.Errorf("add content hash: %w", err)
	}
	o, err := parseObject(canon)
	if err != nil {
		return nil, fmt.Errorf("add content hash: %w", err)
	}
	if o, err = withContentHash(o); err != nil {
		return nil, fmt.Errorf("add content hash: %w", err)
	}
	return o.encode(), nil
}

func withContentHash(o object) (object, error) {
	hashes := object{}
	if v, ok := o.get("hashes"); ok {
		var err error
		if hashes, err = parseObject(v); err != nil {
			return nil, fmt.Errorf("hashes: %w", err)
		}
	}
	hashes = hashes.with("sha256", quote(EncodeBase64(contentHash(o))))
	return o.with("hashes", hashes.encode()), nil
}

// CheckContentHash verifies hashes.sha256. A mismatch means the event was
// altered after its origin hashed it; the spec says to keep it redacted.
func CheckContentHash(e *Event) error {
	o, err := parseObject(e.raw)
	if err != nil {
		return fmt.Errorf("check content hash of %s: %w", e.id, err)
	}
	want, err := expectedContentHash(o)
	if err != nil {
		return fmt.Errorf("check content hash of %s: %w: %w", e.id, ErrContentHashMismatch, err)
	}
	if !bytes.Equal(want, contentHash(o)) {
		return fmt.Errorf("check content hash of %s: %w", e.id, ErrContentHashMismatch)
	}
	return nil
}

func expectedContentHash(o object) ([]byte, error) {
	v, ok := o.get("hashes")
	if !ok {
		return nil, errors.New("no hashes")
	}
	hashes, err := parseObject(v)
	if err != nil {
		return nil, fmt.Errorf("hashes: %w", err)
	}
	v, ok = hashes.get("sha256")
	if !ok {
		return nil, errors.New("no hashes.sha256")
	}
	s, ok := unquote(v)
	if !ok {
		return nil, errors.New("hashes.sha256 is not a string")
	}
	return DecodeBase64(s)
}

// ReferenceHash is the sha256 of the redacted event without "signatures" and
// "unsigned": the event id in room versions 3 and later.
func ReferenceHash(raw []byte, rv *RoomVersion) ([]byte, error) {
	if rv == nil {
		return nil, errors.New("reference hash: nil room version")
	}
	canon, err := canonicaljson.Canonicalize(raw, rv.StrictCanonicalJSON)
	if err != nil {
		return nil, fmt.Errorf("reference hash: %w: %w", ErrMalformedEvent, err)
	}
	o, err := parseObject(canon)
	if err != nil {
		return nil, fmt.Errorf("reference hash: %w: %w", ErrMalformedEvent, err)
	}
	h, err := referenceHash(o, rv)
	if err != nil {
		return nil, fmt.Errorf("reference hash: %w", err)
	}
	return h, nil
}

func referenceHash(o object, rv *RoomVersion) ([]byte, error) {
	r, err := redactObject(o, rv)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(r.without("signatures", "unsigned").encode())
	return sum[:], nil
}

// eventIDFromHash formats a reference hash as an event id of the version's
// format: v3 uses the standard alphabet, v4+ the URL-safe one so that ids
// can appear in URL paths unescaped.
func eventIDFromHash(h []byte, rv *RoomVersion) string {
	if rv.Format == FormatV2 {
		return "$" + EncodeBase64(h)
	}
	return "$" + encodeBase64URL(h)
}
