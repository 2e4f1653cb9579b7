package events_test

import (
	"bytes"
	"crypto/ed25519"
	"regexp"
	"testing"

	"ganglion/internal/events"
)

func TestGenerateSigningKey(t *testing.T) {
	k, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^ed25519:a_[A-Za-z]{4}$`).MatchString(k.ID) {
		t.Errorf("key id %q does not look like Synapse's a_XXXX", k.ID)
	}
	if len(k.Public()) != ed25519.PublicKeySize {
		t.Fatalf("public key has %d bytes", len(k.Public()))
	}
	file := events.FormatSigningKeyFile(k)
	if !regexp.MustCompile(`^ed25519 a_[A-Za-z]{4} [A-Za-z0-9+/]{43}\n$`).Match(file) {
		t.Errorf("key file %q not in Synapse's format", file)
	}
	back, err := events.ParseSigningKeyFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if back.ID != k.ID || !bytes.Equal(back.Private, k.Private) {
		t.Errorf("round trip changed the key: %s vs %s", back.ID, k.ID)
	}
}

func TestParseSigningKeyFile(t *testing.T) {
	const seed = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
	tests := []struct {
		name    string
		in      string
		wantID  string
		wantErr bool
	}{
		{"synapse file", "ed25519 a_AbCd " + seed + "\n", "ed25519:a_AbCd", false},
		{"no trailing newline", "ed25519 1 " + seed, "ed25519:1", false},
		{"padded seed", "ed25519 1 " + seed + "=\n", "ed25519:1", false},
		{"blank lines and comments first", "\n# generated\n\ned25519 auto " + seed + "\n", "ed25519:auto", false},
		{"unknown algorithm skipped", "curve448 x abc\ned25519 k2 " + seed + "\n", "ed25519:k2", false},
		{"first ed25519 key wins", "ed25519 new " + seed + "\ned25519 old " + seed + "\n", "ed25519:new", false},
		{"empty", "", "", true},
		{"no ed25519 key", "# nothing\n", "", true},
		{"missing seed", "ed25519 a_AbCd\n", "", true},
		{"extra field", "ed25519 a_AbCd " + seed + " extra\n", "", true},
		{"bad version", "ed25519 a:b " + seed + "\n", "", true},
		{"bad base64", "ed25519 a_AbCd !!!!\n", "", true},
		{"short seed", "ed25519 a_AbCd Zm9vYmFy\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := events.ParseSigningKeyFile([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && k.ID != tt.wantID {
				t.Errorf("ID = %q, want %q", k.ID, tt.wantID)
			}
		})
	}
}

func TestSigningRejectsBadKeys(t *testing.T) {
	good := specKey(t)
	tests := []struct {
		name   string
		key    events.SigningKey
		server string
	}{
		{"short private key", events.SigningKey{ID: "ed25519:1", Private: good.Private[:10]}, "domain"},
		{"nil private key", events.SigningKey{ID: "ed25519:1"}, "domain"},
		{"wrong algorithm", events.SigningKey{ID: "curve25519:1", Private: good.Private}, "domain"},
		{"bad key version", events.SigningKey{ID: "ed25519:a b", Private: good.Private}, "domain"},
		{"empty server", good, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := events.SignJSON([]byte(`{}`), tt.server, tt.key); err == nil {
				t.Error("SignJSON succeeded")
			}
		})
	}
	if zero := (events.SigningKey{}); zero.Public() != nil || events.FormatSigningKeyFile(zero) != nil {
		t.Error("zero SigningKey should have no public key and no file form")
	}
}
