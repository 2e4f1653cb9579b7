package eventauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"ganglion/internal/events"
)

// Defaults of m.room.power_levels keys that are absent. With no power levels
// event at all the same defaults apply, plus 100 for the creator: the spec
// once said state_default is then 0, but that was a room-hijacking hole
// (MSC1304) and the text was corrected (matrix-spec#861, #1479). invite
// defaults to 0 as in Synapse since forever (matrix-spec#1019).
const (
	defaultBan           = 50
	defaultKick          = 50
	defaultRedact        = 50
	defaultInvite        = 0
	defaultStateDefault  = 50
	defaultEventsDefault = 0
	defaultUsersDefault  = 0
	defaultNotifyRoom    = 50
	creatorLevel         = 100
)

// topLevelKeys are the scalar levels of m.room.power_levels, in the order
// the change rule checks them.
func topLevelKeys() [7]string {
	return [...]string{"users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"}
}

// PowerLevels is the effective content of an m.room.power_levels event:
// every absent key is filled with its default.
type PowerLevels struct {
	Ban           int64
	Kick          int64
	Redact        int64
	Invite        int64
	StateDefault  int64
	EventsDefault int64
	UsersDefault  int64
	// Users, Events and Notifications are never nil. Notifications always
	// has "room".
	Users         map[string]int64
	Events        map[string]int64
	Notifications map[string]int64
	// Creators (v12+, MSC4289) have an infinite power level, which
	// UserLevel reports as math.MaxInt64: above every level a power levels
	// event can hold, and equal only to another creator's.
	Creators []string
}

// CreatorLevel is a creator's power level in room versions with
// PrivilegedCreators.
const CreatorLevel = math.MaxInt64

// UserLevel is userID's power level.
func (pl PowerLevels) UserLevel(userID string) int64 {
	if slices.Contains(pl.Creators, userID) {
		return CreatorLevel
	}
	if l, ok := pl.Users[userID]; ok {
		return l
	}
	return pl.UsersDefault
}

// EventLevel is the level required to send an event of this type.
func (pl PowerLevels) EventLevel(eventType string, isState bool) int64 {
	if l, ok := pl.Events[eventType]; ok {
		return l
	}
	if isState {
		return pl.StateDefault
	}
	return pl.EventsDefault
}

// DefaultPowerLevels are the levels in force while a room has no
// m.room.power_levels event: the creator (content.creator before v11, the
// create event's sender from v11) has 100 (from v12 the creators, with
// additional_creators, have CreatorLevel), everyone else 0, and the named
// levels take their defaults. A nil create gives no creator.
func DefaultPowerLevels(create *events.Event) PowerLevels {
	pl := rawLevels{}.withDefaults()
	if create != nil && create.Version() != nil {
		pl = withCreators(pl, create, create.Version(), true)
	}
	return pl
}

// withCreators gives the room's creators their level: from v12 infinite,
// whether or not there is a power levels event; before v12 100, only when
// there is none (noEvent).
func withCreators(pl PowerLevels, create *events.Event, rv *events.RoomVersion, noEvent bool) PowerLevels {
	if create == nil {
		return pl
	}
	if rv.PrivilegedCreators {
		pl.Creators = creatorsOf(create, rv)
		return pl
	}
	if noEvent {
		if c := creatorOf(create, rv); c != "" {
			pl.Users[c] = creatorLevel
		}
	}
	return pl
}

// WithCreators returns pl (parsed from a power levels event with
// ParsePowerLevels) with the room's creators added as the room version
// ranks them: infinite from v12, nothing to add before.
func (pl PowerLevels) WithCreators(create *events.Event) PowerLevels {
	if create == nil || create.Version() == nil {
		return pl
	}
	return withCreators(pl, create, create.Version(), false)
}

// LevelsFrom is the power levels the auth rules read from a state whose
// m.room.power_levels event is plEv (nil: none) in the room created by
// create (nil: unknown), for room version rv.
func LevelsFrom(plEv, create *events.Event, rv *events.RoomVersion) PowerLevels {
	m := StateMap{}
	if plEv != nil {
		m[StateKey{Type: typePowerLevels}] = plEv
	}
	return levelsFromState(m, create, rv)
}

// ParsePowerLevels decodes m.room.power_levels content as the auth rules of
// rv validate a new power levels event: from v10 every level must be a JSON
// integer; before v10 levels are read as Synapse's Python int() reads them
// (integers, strings such as " 50" or "+1_0", floats truncated toward zero,
// booleans as 0/1). users keys must look like user ids. Values outside int64
// are errors (Python has no such limit; no real room needs one). Before v6,
// malformed notifications entries are dropped instead. Absent keys take
// their defaults.
func ParsePowerLevels(content json.RawMessage, rv *events.RoomVersion) (PowerLevels, error) {
	if rv == nil {
		return PowerLevels{}, errors.New("parse power levels: no room version")
	}
	if rv.LimitNotificationsPowerLevels {
		raw, err := parseRawLevels(content, rv.EnforceIntPowerLevels, false)
		if err != nil {
			return PowerLevels{}, err
		}
		return raw.withDefaults(), nil
	}
	// Before v6 the auth rules never read notifications, so a malformed
	// value there is dropped rather than failing the whole event.
	raw, err := parseRawLevels(withoutKey(content, "notifications"), rv.EnforceIntPowerLevels, false)
	if err != nil {
		return PowerLevels{}, err
	}
	lenient, _ := parseRawLevels(content, rv.EnforceIntPowerLevels, true)
	raw.notifications = lenient.notifications
	return raw.withDefaults(), nil
}

// levelsFromState is the power levels the auth rules consult: the state's
// m.room.power_levels if any, else DefaultPowerLevels.
//
// The state event is read leniently: a value that does not parse is treated
// as absent. An accepted power levels event can only hold such values in
// rooms before v10 whose first power levels event was never compared with a
// predecessor (the only case where Synapse does not int() every value);
// Synapse would raise on using the value, we use the default instead rather
// than wedge the room.
func levelsFromState(auth AuthEvents, create *events.Event, rv *events.RoomVersion) PowerLevels {
	plEv := auth.Get(typePowerLevels, "")
	if plEv == nil {
		return withCreators(rawLevels{}.withDefaults(), create, rv, true)
	}
	raw, _ := parseRawLevels(plEv.Content(), rv.EnforceIntPowerLevels, true)
	return withCreators(raw.withDefaults(), create, rv, false)
}

// rawLevels is power levels content as written: only present keys appear.
// The change rule needs this because adding a key with its default value is
// still a change.
type rawLevels struct {
	top           map[string]int64
	users         map[string]int64
	events        map[string]int64
	notifications map[string]int64
}

func (r rawLevels) withDefaults() PowerLevels {
	get := func(key string, def int64) int64 {
		if v, ok := r.top[key]; ok {
			return v
		}
		return def
	}
	pl := PowerLevels{
		Ban:           get("ban", defaultBan),
		Kick:          get("kick", defaultKick),
		Redact:        get("redact", defaultRedact),
		Invite:        get("invite", defaultInvite),
		StateDefault:  get("state_default", defaultStateDefault),
		EventsDefault: get("events_default", defaultEventsDefault),
		UsersDefault:  get("users_default", defaultUsersDefault),
		Users:         make(map[string]int64, len(r.users)+1),
		Events:        make(map[string]int64, len(r.events)),
		Notifications: make(map[string]int64, len(r.notifications)+1),
	}
	for k, v := range r.users {
		pl.Users[k] = v
	}
	for k, v := range r.events {
		pl.Events[k] = v
	}
	pl.Notifications["room"] = defaultNotifyRoom
	for k, v := range r.notifications {
		pl.Notifications[k] = v
	}
	return pl
}

// parseRawLevels decodes power levels content. strictInts is the v10 rule.
// lenient drops values that do not parse instead of failing (see
// levelsFromState); content that is not an object is never an error then.
func parseRawLevels(content json.RawMessage, strictInts, lenient bool) (rawLevels, error) {
	var r rawLevels
	obj, ok := objectOf(content)
	if !ok {
		if lenient {
			return r, nil
		}
		return r, errors.New("power levels content is not an object")
	}
	r.top = map[string]int64{}
	for _, key := range topLevelKeys() {
		raw, present := obj[key]
		if !present {
			continue
		}
		v, err := parseLevel(raw, strictInts)
		if err != nil {
			if lenient {
				continue
			}
			return r, fmt.Errorf("power levels %s: %w", key, err)
		}
		r.top[key] = v
	}
	var err error
	if r.users, err = parseLevelMap(obj, "users", strictInts, lenient, true); err != nil {
		return r, err
	}
	if r.events, err = parseLevelMap(obj, "events", strictInts, lenient, false); err != nil {
		return r, err
	}
	if r.notifications, err = parseLevelMap(obj, "notifications", strictInts, lenient, false); err != nil {
		return r, err
	}
	return r, nil
}

// parseLevelMap decodes obj[key] as an object of levels; nil when absent.
func parseLevelMap(obj map[string]json.RawMessage, key string, strictInts, lenient, userKeys bool) (map[string]int64, error) {
	raw, present := obj[key]
	if !present {
		return nil, nil
	}
	m, ok := objectOf(raw)
	if !ok {
		if lenient {
			return nil, nil
		}
		return nil, fmt.Errorf("power levels %s is not an object", key)
	}
	out := make(map[string]int64, len(m))
	for k, vraw := range m {
		if userKeys && !isUserID(k) {
			if lenient {
				continue
			}
			return nil, fmt.Errorf("power levels users: %q is not a user id", k)
		}
		v, err := parseLevel(vraw, strictInts)
		if err != nil {
			if lenient {
				continue
			}
			return nil, fmt.Errorf("power levels %s[%q]: %w", key, k, err)
		}
		out[k] = v
	}
	return out, nil
}

// isUserID is the shape Synapse's UserID.from_string accepts: '@', then a
// localpart and a server separated by the first ':'.
func isUserID(s string) bool {
	return len(s) >= 2 && s[0] == '@' && strings.IndexByte(s[1:], ':') >= 0
}

// parseLevel reads one power level value.
func parseLevel(raw json.RawMessage, strictInts bool) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0, errors.New("empty value")
	}
	switch c := raw[0]; {
	case c == '-' || (c >= '0' && c <= '9'):
		if !bytes.ContainsAny(raw, ".eE") {
			v, err := strconv.ParseInt(string(raw), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("integer %s out of range", raw)
			}
			return v, nil
		}
		if strictInts {
			return 0, fmt.Errorf("%s is not an integer", raw)
		}
		// Python's int(float) truncates toward zero.
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || math.IsNaN(f) || f >= math.MaxInt64 || f < math.MinInt64 {
			return 0, fmt.Errorf("number %s out of range", raw)
		}
		return int64(f), nil
	case strictInts:
		return 0, fmt.Errorf("%s is not an integer", raw)
	case c == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, fmt.Errorf("bad string %s", raw)
		}
		return parsePythonInt(s)
	case bytes.Equal(raw, []byte("true")):
		return 1, nil
	case bytes.Equal(raw, []byte("false")):
		return 0, nil
	default:
		return 0, fmt.Errorf("%s is not an integer", raw)
	}
}

// parsePythonInt parses s the way Python's int(str) does in base 10:
// surrounding whitespace, an optional sign, digits with single underscores
// between them. Python also accepts non-ASCII decimal digits; we do not.
func parsePythonInt(s string) (int64, error) {
	t := strings.TrimSpace(s)
	neg := false
	if t != "" && (t[0] == '+' || t[0] == '-') {
		neg = t[0] == '-'
		t = t[1:]
	}
	digits := make([]byte, 0, len(t)+1)
	if neg {
		digits = append(digits, '-')
	}
	prevDigit := false
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c >= '0' && c <= '9':
			digits = append(digits, c)
			prevDigit = true
		case c == '_' && prevDigit && i+1 < len(t) && t[i+1] >= '0' && t[i+1] <= '9':
			prevDigit = false
		default:
			return 0, fmt.Errorf("%q is not an integer", s)
		}
	}
	if !prevDigit {
		return 0, fmt.Errorf("%q is not an integer", s)
	}
	v, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q out of range", s)
	}
	return v, nil
}

// checkPowerLevelsChange is the m.room.power_levels rule: validate the new
// content, then every alteration must be within the sender's power.
func checkPowerLevelsChange(ev *events.Event, auth AuthEvents, rv *events.RoomVersion, senderLevel int64) error {
	prev := auth.Get(typePowerLevels, "")

	// Before v6 notifications take no part in auth, so garbage there must
	// not reject the event.
	content := ev.Content()
	if !rv.LimitNotificationsPowerLevels {
		content = withoutKey(content, "notifications")
	}

	// Validation. From v10 every value must be an integer (rules 9.1–9.3).
	// Before v10 the spec validates only users; Synapse additionally int()s
	// every compared value when there is a previous event and fails on
	// garbage, which parsing everything reproduces. Without a previous event
	// Synapse checks users only, and so do we.
	if !rv.EnforceIntPowerLevels && prev == nil {
		obj, ok := objectOf(content)
		if !ok {
			return reject("power levels content is not an object")
		}
		if _, err := parseLevelMap(obj, "users", false, false, true); err != nil {
			return reject(err.Error())
		}
		return nil
	}
	newRaw, err := parseRawLevels(content, rv.EnforceIntPowerLevels, false)
	if err != nil {
		return reject(err.Error())
	}
	if rv.PrivilegedCreators {
		// MSC4289: creators' level is not the power levels event's to set.
		for _, c := range creatorsOf(auth.Get(typeCreate, ""), rv) {
			if _, listed := newRaw.users[c]; listed {
				return reject("power levels users may not list the room creator " + c)
			}
		}
	}
	if prev == nil {
		return nil
	}
	oldContent := prev.Content()
	if !rv.LimitNotificationsPowerLevels {
		oldContent = withoutKey(oldContent, "notifications")
	}
	oldRaw, err := parseRawLevels(oldContent, rv.EnforceIntPowerLevels, false)
	if err != nil {
		return reject("current " + err.Error())
	}

	for _, key := range topLevelKeys() {
		if err := checkAlteration(key, oldRaw.top, newRaw.top, key, senderLevel); err != nil {
			return err
		}
	}
	for _, key := range unionKeys(oldRaw.events, newRaw.events) {
		if err := checkAlteration("events "+key, oldRaw.events, newRaw.events, key, senderLevel); err != nil {
			return err
		}
	}
	// notifications is empty before v6 (stripped above).
	for _, key := range unionKeys(oldRaw.notifications, newRaw.notifications) {
		if err := checkAlteration("notifications "+key, oldRaw.notifications, newRaw.notifications, key, senderLevel); err != nil {
			return err
		}
	}
	for _, user := range unionKeys(oldRaw.users, newRaw.users) {
		oldV, hadOld := oldRaw.users[user]
		newV, hasNew := newRaw.users[user]
		if hadOld && hasNew && oldV == newV {
			continue
		}
		// Users may lower themselves, but nobody else at or above them.
		if user != ev.Sender() && hadOld && oldV >= senderLevel {
			return reject("sender may not change the level of " + user + ", which is at or above their own")
		}
		if hasNew && newV > senderLevel {
			return reject("sender may not raise " + user + " above their own level")
		}
	}
	return nil
}

// checkAlteration applies "if the current or the new value is above the
// sender's level, reject" to old[key]/new[key] when that entry was added,
// changed or removed. name is for the message.
func checkAlteration(name string, old, new map[string]int64, key string, senderLevel int64) error {
	oldV, hadOld := old[key]
	newV, hasNew := new[key]
	if hadOld && hasNew && oldV == newV {
		return nil
	}
	if hadOld && oldV > senderLevel {
		return reject("sender may not change " + name + " from a level above their own")
	}
	if hasNew && newV > senderLevel {
		return reject("sender may not set " + name + " above their own level")
	}
	return nil
}

// unionKeys lists the keys of a and b, sorted so that the first violation
// reported is deterministic.
func unionKeys(a, b map[string]int64) []string {
	keys := make([]string, 0, len(a)+len(b))
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, dup := a[k]; !dup {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// withoutKey returns content with one top-level key removed; content that
// is not an object is returned unchanged for the caller to reject.
func withoutKey(content json.RawMessage, key string) json.RawMessage {
	obj, ok := objectOf(content)
	if !ok {
		return content
	}
	if _, present := obj[key]; !present {
		return content
	}
	delete(obj, key)
	b, err := json.Marshal(obj)
	if err != nil {
		return content
	}
	return b
}
