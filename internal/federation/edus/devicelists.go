package edus

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"ganglion/internal/keys"
)

// deviceListUpdate is the content of an m.device_list_update.
type deviceListUpdate struct {
	UserID      string          `json:"user_id"`
	DeviceID    string          `json:"device_id"`
	DisplayName *string         `json:"device_display_name"`
	StreamID    int64           `json:"stream_id"`
	PrevID      []int64         `json:"prev_id"`
	Deleted     bool            `json:"deleted"`
	Keys        json.RawMessage `json:"keys"`
}

// DeviceListUpdate handles m.device_list_update: one device of a remote
// user changed (or was deleted), at stream_id of the user's list on their
// server, following the updates prev_id names.
//
// The update is applied to our copy of the list only when it follows on
// from what we have: we follow the list (a fresh copy), and every prev_id
// is the stream id we last applied (each update of a transaction moves
// it, so a chain within one transaction applies). Anything else is a gap
// — updates lost, a list we never fetched, a first update (no prev_id) —
// and the whole list is fetched again from the user's server
// (user/devices). An update at or before what we have is a repeat and
// changes nothing. Either way the device_lists writer owning the user
// stores the change and announces it, so local users sharing a room with
// them see the user in device_lists.changed and /keys/changes.
//
// Only users sharing a room with a local user are followed, as Synapse.
func (h *Handlers) DeviceListUpdate(ctx context.Context, origin string, content json.RawMessage) error {
	var e deviceListUpdate
	if err := json.Unmarshal(content, &e); err != nil {
		return fmt.Errorf("m.device_list_update: %w", err)
	}
	if err := checkOrigin(origin, e.UserID); err != nil {
		return fmt.Errorf("m.device_list_update: %w", err)
	}
	if e.DeviceID == "" {
		return fmt.Errorf("m.device_list_update of %s: no device_id", e.UserID)
	}
	shared, err := h.sharesRoom(ctx, e.UserID)
	if err != nil {
		return fmt.Errorf("m.device_list_update of %s: %w", e.UserID, err)
	}
	if !shared {
		h.log.Debug("ignoring a device list update of a user sharing no room with us", "user_id", e.UserID)
		return nil
	}
	state, err := h.d.Keys.RemoteListState(ctx, e.UserID)
	if err != nil {
		return fmt.Errorf("m.device_list_update of %s: %w", e.UserID, err)
	}
	follows := state.Known && !state.Stale
	if follows && e.StreamID <= state.StreamID {
		return nil // seen: a retried transaction, or covered by a resync
	}
	if !follows || len(e.PrevID) == 0 || slices.ContainsFunc(e.PrevID, func(p int64) bool { return p != state.StreamID }) {
		return h.resync(ctx, e.UserID, e.DeviceID)
	}
	dev := keys.RemoteDevice{DeviceID: e.DeviceID, DisplayName: e.DisplayName, Deleted: e.Deleted}
	if !e.Deleted && len(e.Keys) > 0 && string(e.Keys) != "null" {
		k, _, err := keys.RemoteDeviceKeys(e.Keys, e.UserID, e.DeviceID)
		if err != nil {
			return fmt.Errorf("m.device_list_update: %w", err)
		}
		dev.Keys = k
	}
	if err := h.d.Keys.ApplyRemote(ctx, e.UserID, keys.RemoteChange{StreamID: e.StreamID, Devices: []keys.RemoteDevice{dev}}, nil); err != nil {
		return fmt.Errorf("m.device_list_update of %s: %w", e.UserID, err)
	}
	return nil
}

// resync fetches the user's whole list, within ResyncTimeout: the
// transaction being handled waits for it. A failed resync leaves the list
// stale (queries then ask the user's server) and is retried by the next
// update; the change is still announced, so local clients query again
// rather than keep using the devices they know.
func (h *Handlers) resync(ctx context.Context, userID, deviceID string) error {
	rctx, cancel := context.WithTimeout(ctx, h.opts.ResyncTimeout)
	defer cancel()
	err := h.d.Keys.ResyncRemote(rctx, userID)
	if err == nil {
		return nil
	}
	if aErr := h.d.Keys.AnnounceRemote(ctx, userID, []string{deviceID}); aErr != nil {
		h.log.Warn("announce a device list change", "user_id", userID, "err", aErr)
	}
	return fmt.Errorf("m.device_list_update: %w", err)
}
