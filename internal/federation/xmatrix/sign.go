package xmatrix

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

// VerifyKeyFinder finds a server's verify key by id, valid at atTS (ms
// since the epoch). The keyring (internal/federation/serverkeys) implements
// it; it is declared here, where it is used, so neither package imports
// the other.
type VerifyKeyFinder interface {
	VerifyKey(ctx context.Context, serverName, keyID string, atTS int64) (ed25519.PublicKey, error)
}

// Request is what a request signature covers (the spec's "Request
// Authentication" step 1): method, URI (path and query as sent, starting
// with /_matrix), origin, destination and, for requests with a body, the
// body as JSON.
type Request struct {
	Method      string
	URI         string
	Origin      string
	Destination string
	// Content is the JSON body, or nil for a request without one.
	Content json.RawMessage
}

// signedBytes is the canonical JSON of the object the signature covers.
// Content is canonicalised leniently: the signature must verify over what
// the sender's canonicaliser produced from the same value, and another
// server may send numbers Ganglion would not emit.
func (r Request) signedBytes() ([]byte, error) {
	obj := map[string]json.RawMessage{}
	for k, v := range map[string]string{"method": r.Method, "uri": r.URI, "origin": r.Origin, "destination": r.Destination} {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", k, err)
		}
		obj[k] = b
	}
	if r.Content != nil {
		obj["content"] = r.Content
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode request json: %w", err)
	}
	out, err := canonicaljson.Canonicalize(raw, false)
	if err != nil {
		return nil, fmt.Errorf("canonicalise request json: %w", err)
	}
	return out, nil
}

// Sign signs r with our key and returns the header parameters.
func Sign(r Request, key events.SigningKey) (Params, error) {
	if len(key.Private) != ed25519.PrivateKeySize || !strings.HasPrefix(key.ID, "ed25519:") {
		return Params{}, fmt.Errorf("sign request to %s: unusable signing key %q", r.Destination, key.ID)
	}
	if r.Origin == "" || r.Destination == "" {
		return Params{}, errors.New("sign request: origin and destination are required")
	}
	msg, err := r.signedBytes()
	if err != nil {
		return Params{}, fmt.Errorf("sign request to %s: %w", r.Destination, err)
	}
	return Params{
		Origin: r.Origin, Destination: r.Destination, Key: key.ID,
		Sig: events.EncodeBase64(ed25519.Sign(key.Private, msg)),
	}, nil
}

// ErrBadSignature means the signature does not verify with the key.
var ErrBadSignature = errors.New("signature does not verify")

// Verify checks p's signature over r with the key keys find for p.Origin
// and p.Key at atTS. r.Origin is taken from p; r.Destination must be our
// server name (the sender signs it even when its header leaves it out).
func Verify(ctx context.Context, keys VerifyKeyFinder, p Params, r Request, atTS int64) error {
	if !strings.HasPrefix(p.Key, "ed25519:") {
		return fmt.Errorf("key %q of %s: unsupported algorithm", p.Key, p.Origin)
	}
	sig, err := events.DecodeBase64(p.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("signature of %s with key %s: %w (malformed)", p.Origin, p.Key, ErrBadSignature)
	}
	pub, err := keys.VerifyKey(ctx, p.Origin, p.Key, atTS)
	if err != nil {
		return fmt.Errorf("find key %s of %s: %w", p.Key, p.Origin, err)
	}
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("key %s of %s has %d bytes", p.Key, p.Origin, len(pub))
	}
	r.Origin = p.Origin
	msg, err := r.signedBytes()
	if err != nil {
		return fmt.Errorf("verify request from %s: %w", p.Origin, err)
	}
	if !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("signature of %s with key %s: %w", p.Origin, p.Key, ErrBadSignature)
	}
	return nil
}
