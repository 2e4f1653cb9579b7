package filters

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Filter is the spec's top-level sync filter.
type Filter struct {
	EventFields []string     `json:"event_fields,omitempty"`
	EventFormat string       `json:"event_format,omitempty"`
	Presence    *EventFilter `json:"presence,omitempty"`
	AccountData *EventFilter `json:"account_data,omitempty"`
	Room        *RoomFilter  `json:"room,omitempty"`
}

// RoomFilter is the "room" part of a Filter.
type RoomFilter struct {
	Rooms        []string         `json:"rooms,omitempty"`
	NotRooms     []string         `json:"not_rooms,omitempty"`
	IncludeLeave bool             `json:"include_leave,omitempty"`
	Ephemeral    *RoomEventFilter `json:"ephemeral,omitempty"`
	State        *RoomEventFilter `json:"state,omitempty"`
	Timeline     *RoomEventFilter `json:"timeline,omitempty"`
	AccountData  *RoomEventFilter `json:"account_data,omitempty"`
}

// Parse parses and validates a sync filter. Errors are *Error.
func Parse(raw []byte) (*Filter, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, &Error{Msg: "filter must be a JSON object"}
	}
	var f Filter
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, &Error{Msg: fmt.Sprintf("invalid filter: %v", err)}
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *Filter) validate() error {
	switch f.EventFormat {
	case "", "client", "federation":
	default:
		return &Error{Msg: "event_format must be client or federation"}
	}
	for _, ef := range []*EventFilter{f.Presence, f.AccountData} {
		if ef != nil {
			if err := ef.validate(); err != nil {
				return err
			}
		}
	}
	if r := f.Room; r != nil {
		probe := RoomEventFilter{Rooms: r.Rooms, NotRooms: r.NotRooms}
		if err := probe.validate(); err != nil {
			return err
		}
		for _, rf := range []*RoomEventFilter{r.Ephemeral, r.State, r.Timeline, r.AccountData} {
			if rf != nil {
				if err := rf.validate(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// RoomAllowed applies the top-level room lists.
func (f *Filter) RoomAllowed(roomID string) bool {
	if f == nil || f.Room == nil {
		return true
	}
	return (&RoomEventFilter{Rooms: f.Room.Rooms, NotRooms: f.Room.NotRooms}).MatchesRoom(roomID)
}

// Timeline returns the timeline filter (nil = everything).
func (f *Filter) Timeline() *RoomEventFilter {
	if f == nil || f.Room == nil {
		return nil
	}
	return f.Room.Timeline
}

// State returns the state filter (nil = everything).
func (f *Filter) State() *RoomEventFilter {
	if f == nil || f.Room == nil {
		return nil
	}
	return f.Room.State
}

// Ephemeral returns the ephemeral filter (nil = everything).
func (f *Filter) Ephemeral() *RoomEventFilter {
	if f == nil || f.Room == nil {
		return nil
	}
	return f.Room.Ephemeral
}

// RoomAccountData returns the room account data filter.
func (f *Filter) RoomAccountData() *RoomEventFilter {
	if f == nil || f.Room == nil {
		return nil
	}
	return f.Room.AccountData
}

// PresenceFilter returns the presence filter.
func (f *Filter) PresenceFilter() *EventFilter {
	if f == nil {
		return nil
	}
	return f.Presence
}

// AccountDataFilter returns the global account data filter.
func (f *Filter) AccountDataFilter() *EventFilter {
	if f == nil {
		return nil
	}
	return f.AccountData
}

// IncludeLeave reports room.include_leave.
func (f *Filter) IncludeLeave() bool { return f != nil && f.Room != nil && f.Room.IncludeLeave }

// TimelineLimit is room.timeline.limit, or def when unset.
func (f *Filter) TimelineLimit(def int) int {
	if t := f.Timeline(); t != nil && t.Limit != nil {
		return *t.Limit
	}
	return def
}

// LazyLoadMembers reports room.state.lazy_load_members.
func (f *Filter) LazyLoadMembers() bool {
	s := f.State()
	return s != nil && s.LazyLoadMembers
}

// IncludeRedundantMembers reports room.state.include_redundant_members.
func (f *Filter) IncludeRedundantMembers() bool {
	s := f.State()
	return s != nil && s.IncludeRedundantMembers
}

// Limit returns an EventFilter's limit or def.
func (f *EventFilter) LimitOr(def int) int {
	if f == nil || f.Limit == nil {
		return def
	}
	return *f.Limit
}
