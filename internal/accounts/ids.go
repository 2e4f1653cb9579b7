package accounts

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"hash/crc32"
	"strings"
)

// ValidLocalpart reports whether a localpart may be registered: the spec's
// historical user id grammar, lowercase only.
func ValidLocalpart(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '=', c == '-', c == '/', c == '+':
		default:
			return false
		}
	}
	return true
}

// SplitUserID returns localpart and server name of "@local:server".
func SplitUserID(userID string) (local, server string, ok bool) {
	if len(userID) < 4 || userID[0] != '@' {
		return "", "", false
	}
	i := strings.IndexByte(userID, ':')
	if i < 2 || i == len(userID)-1 {
		return "", "", false
	}
	return userID[1:i], userID[i+1:], true
}

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// randomString draws n characters uniformly from alphabet.
func randomString(n int, alphabet string) string {
	// Rejection sampling keeps the distribution uniform.
	limit := 256 - 256%len(alphabet)
	out := make([]byte, 0, n)
	buf := make([]byte, n*2)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			panic("crypto/rand failed: " + err.Error()) // the OS RNG failing is not recoverable
		}
		for _, b := range buf {
			if int(b) < limit && len(out) < n {
				out = append(out, alphabet[int(b)%len(alphabet)])
			}
		}
	}
	return string(out)
}

// NewDeviceID returns a random device id in Synapse's style.
func NewDeviceID() string { return randomString(10, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") }

// NewAccessToken returns "syt_<b64 localpart>_<random>_<crc>". Encoding the
// localpart lets a router keep a user's syncs on one worker without a
// database lookup; the random part carries the secret (20 × log2(62) ≈ 119
// bits), and the checksum lets us reject typos without touching the DB.
func NewAccessToken(localpart string) string {
	body := "syt_" + base64.RawURLEncoding.EncodeToString([]byte(localpart)) + "_" + randomString(20, alnum)
	return body + "_" + base62(crc32.ChecksumIEEE([]byte(body)), 6)
}

// TokenLocalpart extracts the localpart encoded in a token we issued, for
// routing only: it is not authentication.
func TokenLocalpart(token string) (string, bool) {
	parts := strings.Split(token, "_")
	if len(parts) != 4 || parts[0] != "syt" {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", false
	}
	return string(b), true
}

func tokenChecksumOK(token string) bool {
	i := strings.LastIndexByte(token, '_')
	if !strings.HasPrefix(token, "syt_") || i < 0 {
		return true // not one of ours in this format; let the lookup decide
	}
	return base62(crc32.ChecksumIEEE([]byte(token[:i])), 6) == token[i+1:]
}

func base62(v uint32, width int) string {
	b := make([]byte, width)
	for i := width - 1; i >= 0; i-- {
		b[i] = alnum[v%62]
		v /= 62
	}
	return string(b)
}

// HashToken is how tokens are stored.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
