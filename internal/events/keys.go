package events

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
)

// SigningKey is a server's ed25519 signing key. ID is the full signing key
// identifier ("ed25519:a_AbCd") as it appears under "signatures" and in
// /_matrix/key/v2/server.
type SigningKey struct {
	ID      string
	Private ed25519.PrivateKey
}

// Public returns the verification key, or nil when Private is malformed.
func (k SigningKey) Public() ed25519.PublicKey {
	if len(k.Private) != ed25519.PrivateKeySize {
		return nil
	}
	return k.Private.Public().(ed25519.PublicKey)
}

func (k SigningKey) validate() error {
	if !strings.HasPrefix(k.ID, "ed25519:") || !validKeyVersion(strings.TrimPrefix(k.ID, "ed25519:")) {
		return fmt.Errorf("signing key id %q: want ed25519:<[A-Za-z0-9_]+>", k.ID)
	}
	if len(k.Private) != ed25519.PrivateKeySize {
		return fmt.Errorf("signing key %s: private key has %d bytes, want %d", k.ID, len(k.Private), ed25519.PrivateKeySize)
	}
	return nil
}

// validKeyVersion applies the spec's key id grammar: [a-zA-Z0-9_]+.
func validKeyVersion(v string) bool {
	if v == "" {
		return false
	}
	for _, c := range []byte(v) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// randomLetters returns n random ASCII letters (the alphabet Synapse uses for
// key versions and v1/v2 event id localparts).
func randomLetters(n int) (string, error) {
	buf := make([]byte, n)
	// Rejection sampling keeps the distribution uniform: 208 = 4*52.
	out := make([]byte, 0, n)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("read random bytes: %w", err)
		}
		for _, b := range buf {
			if b < 208 && len(out) < n {
				out = append(out, letters[int(b)%len(letters)])
			}
		}
	}
	return string(out), nil
}

// GenerateSigningKey creates a new key with a random version "a_XXXX", the
// shape Synapse's generate_signing_key uses.
func GenerateSigningKey() (SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SigningKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	suffix, err := randomLetters(4)
	if err != nil {
		return SigningKey{}, fmt.Errorf("generate signing key id: %w", err)
	}
	return SigningKey{ID: "ed25519:a_" + suffix, Private: priv}, nil
}

// ParseSigningKeyFile reads Synapse's signing key file format: lines of
// "<algorithm> <version> <unpadded base64 seed>". Blank lines, '#' comments
// and keys of other algorithms are skipped; the first ed25519 line is used.
// A malformed ed25519 line is an error rather than skipped, so a damaged
// file cannot silently fall through to a different (older) key.
func ParseSigningKeyFile(data []byte) (SigningKey, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if fields[0] != "ed25519" {
			continue
		}
		if len(fields) != 3 {
			return SigningKey{}, fmt.Errorf("signing key file line %d: want \"ed25519 <version> <seed>\", got %d fields", lineNo, len(fields))
		}
		if !validKeyVersion(fields[1]) {
			return SigningKey{}, fmt.Errorf("signing key file line %d: invalid key version %q", lineNo, fields[1])
		}
		seed, err := DecodeBase64(fields[2])
		if err != nil {
			return SigningKey{}, fmt.Errorf("signing key file line %d: %w", lineNo, err)
		}
		if len(seed) != ed25519.SeedSize {
			return SigningKey{}, fmt.Errorf("signing key file line %d: seed has %d bytes, want %d", lineNo, len(seed), ed25519.SeedSize)
		}
		return SigningKey{ID: "ed25519:" + fields[1], Private: ed25519.NewKeyFromSeed(seed)}, nil
	}
	if err := sc.Err(); err != nil {
		return SigningKey{}, fmt.Errorf("read signing key file: %w", err)
	}
	return SigningKey{}, errors.New("signing key file: no ed25519 key found")
}

// FormatSigningKeyFile writes k in the format ParseSigningKeyFile (and
// Synapse) reads. It returns nil when k.Private is not an ed25519 key.
func FormatSigningKeyFile(k SigningKey) []byte {
	if len(k.Private) != ed25519.PrivateKeySize {
		return nil
	}
	version := strings.TrimPrefix(k.ID, "ed25519:")
	return fmt.Appendf(nil, "ed25519 %s %s\n", version, EncodeBase64(k.Private.Seed()))
}
