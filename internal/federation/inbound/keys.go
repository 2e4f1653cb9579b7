package inbound

import (
	"context"
	"encoding/json"
	"net/http"

	"ganglion/internal/accounts"
	"ganglion/internal/keys"
	"ganglion/internal/mxhttp"
)

// Keys is what the device and key endpoints need of the keys domain
// (keys.Service).
type Keys interface {
	UserDevices(ctx context.Context, userID, destination string) (*keys.FederationDevices, bool, error)
	QueryKeys(ctx context.Context, requester string, want map[string][]string) (*keys.QueryResult, error)
	ClaimKeys(ctx context.Context, want map[string]map[string]string) (*keys.ClaimResult, error)
}

// WithKeys serves the device and key endpoints from k; without it they
// are not mounted.
func (s *Server) WithKeys(k Keys) *Server {
	s.keys = k
	return s
}

// checkLocalUser refuses a malformed user id or one of another server:
// a server asks each server only about its own users.
func (s *Server) checkLocalUser(userID string) error {
	_, server, ok := accounts.SplitUserID(userID)
	if !ok {
		return mxhttp.InvalidParam("Invalid user id %q", userID)
	}
	if server != s.cfg.ServerName {
		return mxhttp.InvalidParam("User %s is not hosted on this homeserver", userID)
	}
	return nil
}

// GET /_matrix/federation/v1/user/devices/{userId}
//
// What a remote server resyncs a user's device list from when it sees a
// gap in the user's m.device_list_update prev_id chain.
func (s *Server) userDevices(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	userID := r.PathValue("userId")
	if err := s.checkLocalUser(userID); err != nil {
		return err
	}
	res, found, err := s.keys.UserDevices(r.Context(), userID, from)
	if err != nil {
		return err
	}
	if !found {
		return mxhttp.NotFound("Unknown user %s", userID)
	}
	if !s.cfg.AllowDeviceNames {
		for i := range res.Devices {
			res.Devices[i].DisplayName = nil
			res.Devices[i].Keys = withoutDeviceName(res.Devices[i].Keys)
		}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, res)
}

// POST /_matrix/federation/v1/user/keys/query
//
// Local users only. Only signatures the users made themselves are served,
// and never a user-signing key: those are for the user's own clients.
func (s *Server) userKeysQuery(w http.ResponseWriter, r *http.Request) error {
	if _, err := origin(r); err != nil {
		return err
	}
	var body struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.DeviceKeys == nil {
		return mxhttp.BadJSON("device_keys must be an object")
	}
	for userID := range body.DeviceKeys {
		if err := s.checkLocalUser(userID); err != nil {
			return err
		}
	}
	// No requester: the asking server's users see only what the owners
	// signed themselves.
	res, err := s.keys.QueryKeys(r.Context(), "", body.DeviceKeys)
	if err != nil {
		return err
	}
	if !s.cfg.AllowDeviceNames {
		for _, devs := range res.DeviceKeys {
			for id, k := range devs {
				devs[id] = withoutDeviceName(k)
			}
		}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{
		"device_keys":       res.DeviceKeys,
		"master_keys":       res.MasterKeys,
		"self_signing_keys": res.SelfSigningKeys,
	})
}

// POST /_matrix/federation/v1/user/keys/claim
//
// Claims through keys.ClaimKeys, whose transaction hands each one-time key
// out once whichever process serves the request.
func (s *Server) userKeysClaim(w http.ResponseWriter, r *http.Request) error {
	if _, err := origin(r); err != nil {
		return err
	}
	var body struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.OneTimeKeys == nil {
		return mxhttp.BadJSON("one_time_keys must be an object")
	}
	for userID, devices := range body.OneTimeKeys {
		if err := s.checkLocalUser(userID); err != nil {
			return err
		}
		for deviceID, alg := range devices {
			if alg == "" {
				return mxhttp.BadJSON("one_time_keys.%s.%s: algorithm must not be empty", userID, deviceID)
			}
		}
	}
	res, err := s.keys.ClaimKeys(r.Context(), body.OneTimeKeys)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"one_time_keys": res.OneTimeKeys})
}

// withoutDeviceName drops unsigned.device_display_name from device keys
// (outside what the device signed), as Synapse does unless
// allow_device_name_lookup_over_federation is set.
func withoutDeviceName(keys json.RawMessage) json.RawMessage {
	if len(keys) == 0 {
		return keys
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(keys, &obj) != nil {
		return keys
	}
	var unsigned map[string]json.RawMessage
	if json.Unmarshal(obj["unsigned"], &unsigned) != nil || unsigned["device_display_name"] == nil {
		return keys
	}
	delete(unsigned, "device_display_name")
	if len(unsigned) == 0 {
		delete(obj, "unsigned")
	} else if b, err := json.Marshal(unsigned); err == nil {
		obj["unsigned"] = b
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return keys
	}
	return out
}
