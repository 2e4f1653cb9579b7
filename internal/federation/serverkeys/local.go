package serverkeys

import (
	"crypto/ed25519"
	"fmt"
	"sync"
	"time"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
)

// LocalConfig describes this server's keys.
type LocalConfig struct {
	ServerName string
	Key        events.SigningKey
	// OldKeys are old_signing_keys: published in old_verify_keys, and valid
	// for our own signatures up to their expired_ts.
	OldKeys map[string]OldKey
	// RefreshInterval is key_refresh_interval: our answer's valid_until_ts
	// is this far after the time it was built.
	RefreshInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Local is our key server: it builds and signs the answer to
// GET /_matrix/key/v2/server, rebuilding it (with a later valid_until_ts)
// once less than half the refresh interval remains, as Synapse does, so
// that every caller within a period gets byte-identical answers.
type Local struct {
	cfg LocalConfig

	mu         sync.Mutex
	body       []byte
	validUntil int64
}

// NewLocal checks the key and builds the first answer.
func NewLocal(cfg LocalConfig) (*Local, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RefreshInterval <= 0 {
		return nil, fmt.Errorf("local key server: refresh interval must be positive, got %v", cfg.RefreshInterval)
	}
	if cfg.Key.Public() == nil {
		return nil, fmt.Errorf("local key server: no signing key")
	}
	if _, clash := cfg.OldKeys[cfg.Key.ID]; clash {
		return nil, fmt.Errorf("local key server: old_signing_keys lists the current key %s", cfg.Key.ID)
	}
	l := &Local{cfg: cfg}
	if _, err := l.Response(); err != nil {
		return nil, err
	}
	return l, nil
}

// ServerName is the server this key server speaks for.
func (l *Local) ServerName() string { return l.cfg.ServerName }

// SigningKey is the key our answers (and notary answers) are signed with.
func (l *Local) SigningKey() events.SigningKey { return l.cfg.Key }

// Response returns our signed key answer (canonical JSON; callers must not
// modify it).
func (l *Local) Response() ([]byte, error) {
	now := l.cfg.Now().UnixMilli()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.body != nil && now+l.cfg.RefreshInterval.Milliseconds()/2 <= l.validUntil {
		return l.body, nil
	}
	validUntil := now + l.cfg.RefreshInterval.Milliseconds()
	old := map[string]any{}
	for id, k := range l.cfg.OldKeys {
		old[id] = map[string]any{"key": events.EncodeBase64(k.Key), "expired_ts": k.ExpiredTS}
	}
	unsigned, err := canonicaljson.Marshal(map[string]any{
		"server_name":     l.cfg.ServerName,
		"valid_until_ts":  validUntil,
		"verify_keys":     map[string]any{l.cfg.Key.ID: map[string]any{"key": events.EncodeBase64(l.cfg.Key.Public())}},
		"old_verify_keys": old,
	})
	if err != nil {
		return nil, fmt.Errorf("build key response: %w", err)
	}
	body, err := events.SignJSON(unsigned, l.cfg.ServerName, l.cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("sign key response: %w", err)
	}
	l.body, l.validUntil = body, validUntil
	return body, nil
}

// verifyKey finds one of our own keys: the current one is valid at any time
// (we hold it, so anything signed with it is ours), an old one up to its
// expired_ts.
func (l *Local) verifyKey(keyID string, atTS int64) (ed25519.PublicKey, error) {
	if keyID == l.cfg.Key.ID {
		return l.cfg.Key.Public(), nil
	}
	old, ok := l.cfg.OldKeys[keyID]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no key %s", ErrKeyNotFound, l.cfg.ServerName, keyID)
	}
	if old.ExpiredTS < atTS {
		return nil, fmt.Errorf("%w: our key %s expired at %d, before %d", ErrKeyNotValid, keyID, old.ExpiredTS, atTS)
	}
	return old.Key, nil
}
