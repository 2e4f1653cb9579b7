package config

import (
	"crypto/ed25519"
	"fmt"
	"sort"
	"strings"
	"time"

	"ganglion/internal/events"
)

// OldSigningKey is one entry of old_signing_keys: a verification key this
// server signed with before, published in old_verify_keys so that events
// and requests it signed stay verifiable.
type OldSigningKey struct {
	// Key is the unpadded base64 ed25519 public key.
	Key string `yaml:"key"`
	// ExpiredTS is when the key stopped being used, in milliseconds.
	ExpiredTS int64 `yaml:"expired_ts"`
}

// TrustedKeyServer is one parsed entry of trusted_key_servers: a notary
// this server asks for other servers' keys.
type TrustedKeyServer struct {
	ServerName string
	// VerifyKeys are the notary's keys by key id; its answers must be
	// signed by one of them. Empty means the answers are believed on the
	// strength of TLS alone, as Synapse does.
	VerifyKeys map[string]ed25519.PublicKey
	// AcceptKeysInsecurely is Synapse's opt-in for a notary without
	// verify_keys; kept so configs round-trip.
	AcceptKeysInsecurely bool
}

// defaultKeyRefreshInterval is Synapse's key_refresh_interval default.
const defaultKeyRefreshInterval = 24 * time.Hour

// KeyRefreshIntervalValue is key_refresh_interval: how far in the future
// the valid_until_ts of our /_matrix/key/v2/server answer lies.
func (c *Config) KeyRefreshIntervalValue() time.Duration {
	d, err := c.KeyRefreshInterval.Parse()
	if err != nil || d <= 0 {
		return defaultKeyRefreshInterval
	}
	return d
}

// OldVerifyKey is an old_signing_keys entry decoded.
type OldVerifyKey struct {
	Key       ed25519.PublicKey
	ExpiredTS int64
}

// OldVerifyKeys returns old_signing_keys decoded, skipping entries Validate
// refuses.
func (c *Config) OldVerifyKeys() map[string]OldVerifyKey {
	out := map[string]OldVerifyKey{}
	for id, k := range c.OldSigningKeys {
		if pub, err := decodeVerifyKey(id, k.Key); err == nil {
			out[id] = OldVerifyKey{Key: pub, ExpiredTS: k.ExpiredTS}
		}
	}
	return out
}

// KeyServers returns trusted_key_servers parsed. As in Synapse, leaving the
// key out means matrix.org (without verify_keys, so its answers are trusted
// on the strength of TLS); an empty list means no notary. Entries Validate
// refuses are skipped.
func (c *Config) KeyServers() []TrustedKeyServer {
	out, _ := parseKeyServers(c.TrustedKeyServers)
	return out
}

// KeyServersDefaulted reports whether trusted_key_servers was left out,
// for the start-up warning Synapse gives (silenced by
// suppress_key_server_warning).
func (c *Config) KeyServersDefaulted() bool { return c.TrustedKeyServers == nil }

func parseKeyServers(raw []map[string]any) ([]TrustedKeyServer, []Problem) {
	if raw == nil {
		return []TrustedKeyServer{{ServerName: "matrix.org"}}, nil
	}
	var out []TrustedKeyServer
	var ps problems
	for i, entry := range raw {
		path := fmt.Sprintf("trusted_key_servers[%d]", i)
		name, ok := entry["server_name"].(string)
		if !ok || checkServerName(name) != nil {
			ps.add(path+".server_name", "must be a server name, got %v", entry["server_name"])
			continue
		}
		ks := TrustedKeyServer{ServerName: name}
		if v, present := entry["accept_keys_insecurely"]; present {
			b, ok := v.(bool)
			if !ok {
				ps.add(path+".accept_keys_insecurely", "must be true or false, got %v", v)
				continue
			}
			ks.AcceptKeysInsecurely = b
		}
		bad := false
		if v, present := entry["verify_keys"]; present && v != nil {
			m, ok := v.(map[string]any)
			if !ok {
				ps.add(path+".verify_keys", "must map key ids to base64 ed25519 keys")
				continue
			}
			ks.VerifyKeys = map[string]ed25519.PublicKey{}
			ids := make([]string, 0, len(m))
			for id := range m {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			for _, id := range ids {
				s, _ := m[id].(string)
				pub, err := decodeVerifyKey(id, s)
				if err != nil {
					ps.add(path+".verify_keys."+id, "%v", err)
					bad = true
					continue
				}
				ks.VerifyKeys[id] = pub
			}
		}
		if !bad {
			out = append(out, ks)
		}
	}
	return out, ps
}

func decodeVerifyKey(id, b64 string) (ed25519.PublicKey, error) {
	if !strings.HasPrefix(id, "ed25519:") || len(id) == len("ed25519:") {
		return nil, fmt.Errorf("key id %q: only ed25519:<version> keys are supported", id)
	}
	b, err := events.DecodeBase64(b64)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("must be an unpadded base64 ed25519 public key (%d bytes)", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

func (c *Config) validateServerKeys(ps *problems) {
	if c.KeyRefreshInterval.Set() {
		if d, err := c.KeyRefreshInterval.Parse(); err != nil {
			ps.add("key_refresh_interval", "%v", err)
		} else if d < time.Minute {
			ps.add("key_refresh_interval", "must be at least 1m, got %q", string(c.KeyRefreshInterval))
		}
	}
	ids := make([]string, 0, len(c.OldSigningKeys))
	for id := range c.OldSigningKeys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		k := c.OldSigningKeys[id]
		if _, err := decodeVerifyKey(id, k.Key); err != nil {
			ps.add("old_signing_keys."+id+".key", "%v", err)
		}
		if k.ExpiredTS <= 0 {
			ps.add("old_signing_keys."+id+".expired_ts", "must be the time the key expired, in milliseconds since the epoch")
		}
	}
	_, kps := parseKeyServers(c.TrustedKeyServers)
	*ps = append(*ps, kps...)
}
