package events

// EventFormat is how a room version encodes event ids and references.
type EventFormat int

const (
	// FormatV1: event_id is part of the event; prev/auth events are
	// [[id, {"sha256": …}], …] pairs (room versions 1 and 2).
	FormatV1 EventFormat = 1
	// FormatV2: id is "$" + unpadded standard base64 of the reference hash (v3).
	FormatV2 EventFormat = 2
	// FormatV3: id is "$" + unpadded URL-safe base64 of the reference hash (v4+).
	FormatV3 EventFormat = 3
)

// StateResAlgorithm names the state resolution algorithm of a room version.
type StateResAlgorithm int

const (
	StateResV1 StateResAlgorithm = 1
	StateResV2 StateResAlgorithm = 2
	// StateResV21 is v2 with MSC4297's changes (room version 12): the
	// conflicted state subgraph joins the full conflicted set, and the first
	// iterative auth checks start from an empty state.
	StateResV21 StateResAlgorithm = 3
)

// RoomVersion lists the behaviours that differ between room versions. Code
// branches on these flags, never on the version string, so that a new
// version is a new table row.
type RoomVersion struct {
	ID       string
	Stable   bool
	Format   EventFormat
	StateRes StateResAlgorithm

	// EnforceKeyValidity: signing keys must be valid at origin_server_ts (v5+).
	EnforceKeyValidity bool
	// SpecialCaseAliases: m.room.aliases has its own auth rule and survives
	// redaction with "aliases" (v1–v5).
	SpecialCaseAliases bool
	// StrictCanonicalJSON: reject floats and out-of-range ints (v6+).
	StrictCanonicalJSON bool
	// LimitNotificationsPowerLevels: "notifications" is checked in power level
	// changes (v6+).
	LimitNotificationsPowerLevels bool
	// KnockJoinRule: join_rule "knock" and membership "knock" exist (v7+).
	KnockJoinRule bool
	// RestrictedJoinRule: join_rule "restricted" exists (v8+).
	RestrictedJoinRule bool
	// RestrictedJoinRuleFix: redaction keeps join_authorised_via_users_server (v9+).
	RestrictedJoinRuleFix bool
	// KnockRestrictedJoinRule: join_rule "knock_restricted" exists (v10+).
	KnockRestrictedJoinRule bool
	// EnforceIntPowerLevels: power level values must be integers, not strings (v10+).
	EnforceIntPowerLevels bool
	// ImplicitRoomCreator: the create event's sender is the creator; content
	// "creator" is not required (v11+).
	ImplicitRoomCreator bool
	// UpdatedRedactionRules: v11's redaction algorithm (keeps all create
	// content, "invite" in power levels, content.redacts; drops origin,
	// membership and prev_state top-level keys).
	UpdatedRedactionRules bool
	// RedactsInContent: m.room.redaction carries redacts in content (v11+).
	RedactsInContent bool
	// RoomIDFromCreate (MSC4291, v12+): the create event has no room_id; the
	// room id is "!" + the create event's reference hash (its event id with
	// '!' for '$'), and other events do not list the create event among
	// their auth events: it is implied by their room_id.
	RoomIDFromCreate bool
	// PrivilegedCreators (MSC4289, v12+): the create event's sender and the
	// users in content.additional_creators have an infinite power level and
	// may not appear in m.room.power_levels' users.
	PrivilegedCreators bool
}

// DefaultRoomVersion is the version createRoom uses when none is asked for.
const DefaultRoomVersion = "10"

var roomVersions = func() map[string]*RoomVersion {
	v1 := RoomVersion{ID: "1", Stable: true, Format: FormatV1, StateRes: StateResV1, SpecialCaseAliases: true}
	v2 := v1
	v2.ID, v2.StateRes = "2", StateResV2
	v3 := v2
	v3.ID, v3.Format = "3", FormatV2
	v4 := v3
	v4.ID, v4.Format = "4", FormatV3
	v5 := v4
	v5.ID, v5.EnforceKeyValidity = "5", true
	v6 := v5
	v6.ID, v6.SpecialCaseAliases, v6.StrictCanonicalJSON, v6.LimitNotificationsPowerLevels = "6", false, true, true
	v7 := v6
	v7.ID, v7.KnockJoinRule = "7", true
	v8 := v7
	v8.ID, v8.RestrictedJoinRule = "8", true
	v9 := v8
	v9.ID, v9.RestrictedJoinRuleFix = "9", true
	v10 := v9
	v10.ID, v10.KnockRestrictedJoinRule, v10.EnforceIntPowerLevels = "10", true, true
	v11 := v10
	v11.ID, v11.ImplicitRoomCreator, v11.UpdatedRedactionRules, v11.RedactsInContent = "11", true, true, true
	v12 := v11
	v12.ID, v12.StateRes, v12.RoomIDFromCreate, v12.PrivilegedCreators = "12", StateResV21, true, true
	m := map[string]*RoomVersion{}
	for _, v := range []RoomVersion{v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12} {
		v := v
		m[v.ID] = &v
	}
	return m
}()

// LookupRoomVersion returns the version's behaviour table, or false when the
// server does not know it. A known version is not necessarily one this
// server creates or joins rooms of: that is SupportedRoomVersions.
func LookupRoomVersion(id string) (*RoomVersion, bool) {
	v, ok := roomVersions[id]
	return v, ok
}

// SupportedRoomVersions lists the versions rooms can be created, upgraded
// to and joined in, for /capabilities and createRoom. Every known version
// is: a version is added to the table only once it works end to end.
func SupportedRoomVersions() []string {
	return []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}
}

// IsSupportedRoomVersion reports whether id is in SupportedRoomVersions.
func IsSupportedRoomVersion(id string) bool {
	for _, v := range SupportedRoomVersions() {
		if v == id {
			return true
		}
	}
	return false
}

// CreateEventIDForRoom is the event id of the create event of a room whose
// id is its create event's reference hash (RoomIDFromCreate). False for room
// ids of the older form ("!opaque:server").
func CreateEventIDForRoom(roomID string) (string, bool) {
	if len(roomID) < 2 || roomID[0] != '!' {
		return "", false
	}
	for i := 1; i < len(roomID); i++ {
		if roomID[i] == ':' {
			return "", false
		}
	}
	return "$" + roomID[1:], true
}
