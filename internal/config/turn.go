package config

import (
	"fmt"
	"strings"
	"time"
)

// TURN keys (Synapse's, top level): GET /voip/turnServer hands clients
// either time-limited credentials derived from turn_shared_secret (the TURN
// REST API scheme coturn's use-auth-secret implements) or the static
// turn_username/turn_password.

// defaultTURNUserLifetime is Synapse's turn_user_lifetime default.
const defaultTURNUserLifetime = "1h"

// TURNSecret is turn_shared_secret or the contents of
// turn_shared_secret_path.
func (c *Config) TURNSecret() string {
	if c.TURNSharedSecret != "" {
		return c.TURNSharedSecret
	}
	return c.turnSecretFromFile
}

// TURNLifetime is turn_user_lifetime (one hour if it does not parse;
// Validate reports that).
func (c *Config) TURNLifetime() time.Duration {
	d, err := c.TURNUserLifetime.Parse()
	if err != nil || d <= 0 {
		return time.Hour
	}
	return d
}

func (c *Config) validateTURN(ps *problems) {
	for i, u := range c.TURNURIs {
		scheme, rest, ok := strings.Cut(u, ":")
		if !ok || rest == "" || (scheme != "turn" && scheme != "turns" && scheme != "stun" && scheme != "stuns") {
			ps.add(fmt.Sprintf("turn_uris[%d]", i), "must be a turn:, turns:, stun: or stuns: URI such as \"turn:turn.example.org:3478?transport=udp\", got %q", u)
		}
	}
	if c.TURNSharedSecret != "" && c.TURNSharedSecretPath != "" {
		ps.add("turn_shared_secret_path", "set only one of turn_shared_secret and turn_shared_secret_path")
	}
	if (c.TURNUsername == "") != (c.TURNPassword == "") {
		key := "turn_password"
		if c.TURNUsername == "" {
			key = "turn_username"
		}
		ps.add(key, "turn_username and turn_password go together")
	}
	if d, err := c.TURNUserLifetime.Parse(); err != nil || d <= 0 {
		ps.add("turn_user_lifetime", "must be a positive duration such as 1h, got %q", string(c.TURNUserLifetime))
	}
}
