package sync

import "context"

// keys fills the E2EE parts of a response: device_lists (incremental syncs
// only, as the spec has it) and the device's one-time key counts and unused
// fallback key types, which clients read on every sync to top their keys up.
func (s *Service) keys(ctx context.Context, r *request, resp *Response) error {
	if s.Keys == nil {
		return nil
	}
	// Device lists change with the device_lists stream and with
	// membership; most syncs see neither, and the store knows whether any
	// membership changed after the client's token without a query.
	if r.since != nil && (r.since.DeviceLists < r.now.DeviceLists ||
		(r.since.Events < r.now.EventsMax() && s.store.MembershipChangedAfter(r.since.Events))) {
		changed, left, err := s.Keys.Changes(ctx, r.userID, *r.since, r.now)
		if err != nil {
			return err
		}
		resp.DeviceLists.Changed, resp.DeviceLists.Left = changed, left
	}
	if r.deviceID == "" {
		return nil
	}
	counts, fb, err := s.Keys.SyncKeyCounts(ctx, r.userID, r.deviceID)
	if err != nil {
		return err
	}
	resp.DeviceOneTimeKeysCount = counts
	resp.DeviceUnusedFallbackKeyTypes = &fb
	return nil
}
