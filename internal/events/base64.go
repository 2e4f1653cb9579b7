package events

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// EncodeBase64 encodes b as the spec's "unpadded Base64" (standard alphabet).
func EncodeBase64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// encodeBase64URL is the URL-safe unpadded form used by v4+ event ids.
func encodeBase64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// DecodeBase64 accepts standard or URL-safe Base64, padded or not, because
// the spec asks implementations to be liberal here and other servers do
// send padded values.
func DecodeBase64(s string) ([]byte, error) {
	trimmed := strings.TrimRight(s, "=")
	enc := base64.RawStdEncoding
	if strings.ContainsAny(trimmed, "-_") {
		enc = base64.RawURLEncoding
	}
	b, err := enc.DecodeString(trimmed)
	if err != nil {
		return nil, fmt.Errorf("decode base64: %w", err)
	}
	return b, nil
}
