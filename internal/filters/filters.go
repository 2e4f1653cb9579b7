// Package filters owns the client-server API's event filters: parsing with
// validation errors, and matching events against them.
package filters

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// EventFilter is the spec's EventFilter.
type EventFilter struct {
	Limit      *int     `json:"limit,omitempty"`
	Types      []string `json:"types,omitempty"`
	NotTypes   []string `json:"not_types,omitempty"`
	Senders    []string `json:"senders,omitempty"`
	NotSenders []string `json:"not_senders,omitempty"`
}

// RoomEventFilter is the spec's RoomEventFilter.
type RoomEventFilter struct {
	EventFilter
	Rooms                   []string `json:"rooms,omitempty"`
	NotRooms                []string `json:"not_rooms,omitempty"`
	ContainsURL             *bool    `json:"contains_url,omitempty"`
	LazyLoadMembers         bool     `json:"lazy_load_members,omitempty"`
	IncludeRedundantMembers bool     `json:"include_redundant_members,omitempty"`
	UnreadThreadNotifs      bool     `json:"unread_thread_notifications,omitempty"`
}

// Error is a filter that does not validate; HTTP maps it to M_BAD_JSON or
// M_INVALID_PARAM depending on where the filter came from.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

// ParseRoomEventFilter parses and validates a RoomEventFilter.
func ParseRoomEventFilter(raw []byte) (*RoomEventFilter, error) {
	var f RoomEventFilter
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&f); err != nil {
		return nil, &Error{Msg: fmt.Sprintf("invalid filter: %v", err)}
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *EventFilter) validate() error {
	if f.Limit != nil && *f.Limit < 0 {
		return &Error{Msg: "filter limit must not be negative"}
	}
	for _, s := range append(append([]string{}, f.Senders...), f.NotSenders...) {
		if !strings.HasPrefix(s, "@") || !strings.Contains(s, ":") {
			return &Error{Msg: fmt.Sprintf("invalid user id in filter: %q", s)}
		}
	}
	return nil
}

func (f *RoomEventFilter) validate() error {
	if err := f.EventFilter.validate(); err != nil {
		return err
	}
	for _, r := range append(append([]string{}, f.Rooms...), f.NotRooms...) {
		if !strings.HasPrefix(r, "!") {
			return &Error{Msg: fmt.Sprintf("invalid room id in filter: %q", r)}
		}
	}
	return nil
}

// matchType implements the spec's '*' wildcard in type filters.
func matchType(pattern, typ string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == typ
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(typ, parts[0]) {
		return false
	}
	rest := typ[len(parts[0]):]
	for i, p := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(rest, p)
		}
		j := strings.Index(rest, p)
		if j < 0 {
			return false
		}
		rest = rest[j+len(p):]
	}
	return true
}

func anyType(patterns []string, typ string) bool {
	for _, p := range patterns {
		if matchType(p, typ) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Matches reports whether an event of this type and sender passes.
func (f *EventFilter) Matches(typ, sender string) bool {
	if f == nil {
		return true
	}
	if anyType(f.NotTypes, typ) || contains(f.NotSenders, sender) {
		return false
	}
	if f.Types != nil && !anyType(f.Types, typ) {
		return false
	}
	if f.Senders != nil && !contains(f.Senders, sender) {
		return false
	}
	return true
}

// MatchesRoom reports whether events of the room pass the room lists.
func (f *RoomEventFilter) MatchesRoom(roomID string) bool {
	if f == nil {
		return true
	}
	if contains(f.NotRooms, roomID) {
		return false
	}
	return f.Rooms == nil || contains(f.Rooms, roomID)
}

// MatchesEvent applies type, sender, room and contains_url.
func (f *RoomEventFilter) MatchesEvent(roomID, typ, sender string, content json.RawMessage) bool {
	if f == nil {
		return true
	}
	if !f.MatchesRoom(roomID) || !f.EventFilter.Matches(typ, sender) {
		return false
	}
	if f.ContainsURL != nil {
		var c struct {
			URL any `json:"url"`
		}
		_ = json.Unmarshal(content, &c)
		_, isString := c.URL.(string)
		if *f.ContainsURL != isString {
			return false
		}
	}
	return true
}

func jsonValid(b []byte) bool { return json.Valid(b) }
