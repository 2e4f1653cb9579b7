package config

import "strings"

// ServerNoticesConfig is Synapse's server_notices section: when set, the
// server can send notices to users from a system user, in a per-user
// notices room tagged m.server_notice.
type ServerNoticesConfig struct {
	// SystemMXIDLocalpart is the system user's localpart (required). The
	// user is created on first use and cannot log in.
	SystemMXIDLocalpart   string `yaml:"system_mxid_localpart"`
	SystemMXIDDisplayName string `yaml:"system_mxid_display_name"`
	SystemMXIDAvatarURL   string `yaml:"system_mxid_avatar_url"`
	// RoomName is the notices room's name (Synapse: "Server Notices").
	RoomName      string `yaml:"room_name"`
	RoomAvatarURL string `yaml:"room_avatar_url"`
	RoomTopic     string `yaml:"room_topic"`
	// AutoJoin joins the user to the room instead of inviting them.
	AutoJoin bool `yaml:"auto_join"`
}

// ServerNoticesEnabled reports whether server_notices is configured.
func (c *Config) ServerNoticesEnabled() bool {
	return c.ServerNotices != nil && c.ServerNotices.SystemMXIDLocalpart != ""
}

// ServerNoticesUserID is the system user's id ("" when notices are off).
func (c *Config) ServerNoticesUserID() string {
	if !c.ServerNoticesEnabled() {
		return ""
	}
	return "@" + c.ServerNotices.SystemMXIDLocalpart + ":" + c.ServerName
}

func (c *Config) validateServerNotices(ps *problems) {
	sn := c.ServerNotices
	if sn == nil {
		return
	}
	if sn.SystemMXIDLocalpart == "" {
		ps.add("server_notices.system_mxid_localpart", "required when server_notices is set")
	} else if !validLocalpart(sn.SystemMXIDLocalpart) {
		ps.add("server_notices.system_mxid_localpart", "%q is not a valid user id localpart (a-z, 0-9, and ._=-/+)", sn.SystemMXIDLocalpart)
	}
	for _, kv := range [][2]string{{"system_mxid_avatar_url", sn.SystemMXIDAvatarURL}, {"room_avatar_url", sn.RoomAvatarURL}} {
		if kv[1] != "" && !strings.HasPrefix(kv[1], "mxc://") {
			ps.add("server_notices."+kv[0], "must be an mxc:// URI, got %q", kv[1])
		}
	}
}

// validLocalpart applies the spec's user id localpart grammar.
func validLocalpart(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("._=-/+", r)) {
			return false
		}
	}
	return s != ""
}
