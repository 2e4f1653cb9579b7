package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Duration is a length of time as Synapse writes it: a number of
// milliseconds, or a number with a unit suffix — ms, s, m, h, d, w or y
// ("5m", "30d"). Empty means unset. It is kept as written so a bad value
// becomes a Validate problem with its key path rather than a decode error.
type Duration string

// durationUnits are Synapse's (synapse/config/_base.py parse_duration).
var durationUnits = []struct {
	suffix string
	ms     int64
}{
	{"ms", 1}, // before "s"
	{"s", 1000},
	{"m", 60 * 1000},
	{"h", 60 * 60 * 1000},
	{"d", 24 * 60 * 60 * 1000},
	{"w", 7 * 24 * 60 * 60 * 1000},
	{"y", 365 * 24 * 60 * 60 * 1000},
}

// Set reports whether the key was given.
func (d Duration) Set() bool { return strings.TrimSpace(string(d)) != "" }

// Parse returns the duration; 0 when unset.
func (d Duration) Parse() (time.Duration, error) {
	v := strings.TrimSpace(string(d))
	if v == "" {
		return 0, nil
	}
	mult := int64(1)
	for _, u := range durationUnits {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = strings.TrimSpace(n), u.ms
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid duration %q: want a whole number of milliseconds, or a number with a unit (ms, s, m, h, d, w, y)", string(d))
	}
	if n > math.MaxInt64/mult/int64(time.Millisecond) {
		return 0, fmt.Errorf("duration %q is too long", string(d))
	}
	return time.Duration(n*mult) * time.Millisecond, nil
}

// Value returns the duration of a key that must be given (http_limits'
// keys, which have defaults): empty is an error there.
func (d Duration) Value() (time.Duration, error) {
	if !d.Set() {
		return 0, fmt.Errorf("empty duration")
	}
	return d.Parse()
}

// Must returns the duration of a validated config (0 when unset or bad).
func (d Duration) Must() time.Duration {
	v, _ := d.Parse()
	return v
}

// validateLifetimes checks the session and token lifetimes: each must
// parse, and none may exceed session_lifetime, as Synapse refuses.
func (c *Config) validateLifetimes(ps *problems) {
	keys := []struct {
		key string
		d   Duration
	}{
		{"session_lifetime", c.SessionLifetime},
		{"refreshable_access_token_lifetime", c.RefreshableAccessTokenLifetime},
		{"refresh_token_lifetime", c.RefreshTokenLifetime},
		{"nonrefreshable_access_token_lifetime", c.NonrefreshableAccessTokenLifetime},
	}
	parsed := map[string]time.Duration{}
	for _, k := range keys {
		v, err := k.d.Parse()
		if err != nil {
			ps.add(k.key, "%v", err)
			continue
		}
		if k.d.Set() && v == 0 {
			ps.add(k.key, "must be longer than 0")
			continue
		}
		parsed[k.key] = v
	}
	session, ok := parsed["session_lifetime"]
	if !ok || session == 0 {
		return
	}
	for _, k := range keys[1:] {
		if v := parsed[k.key]; v > session {
			ps.add(k.key, "%s exceeds session_lifetime (%s)", string(k.d), string(c.SessionLifetime))
		}
	}
}
