package keys

import (
	"encoding/json"
	"net/http"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// Routes registers the /keys endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("POST", "/keys/upload", srv.Handle(acc.Auth(s.upload)))
	// The deprecated form with the device id in the path; the device is
	// still the requester's.
	mux.HandleClient("POST", "/keys/upload/{deviceId}", srv.Handle(acc.Auth(s.upload)))
	mux.HandleClient("POST", "/keys/query", srv.Handle(acc.Auth(s.query)))
	mux.HandleClient("POST", "/keys/claim", srv.Handle(acc.Auth(s.claim)))
	mux.HandleClient("GET", "/keys/changes", srv.Handle(acc.Auth(s.changes)))
}

func (s *Service) upload(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body Upload
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if req.DeviceID == "" {
		return mxhttp.InvalidParam("Keys can only be uploaded for a device")
	}
	counts, err := s.UploadKeys(r.Context(), req.UserID, req.DeviceID, body)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"one_time_key_counts": counts})
}

func (s *Service) query(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		DeviceKeys map[string]json.RawMessage `json:"device_keys"`
		Timeout    *int64                     `json:"timeout"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.DeviceKeys == nil {
		return mxhttp.BadJSON("device_keys must be an object")
	}
	want := make(map[string][]string, len(body.DeviceKeys))
	for userID, raw := range body.DeviceKeys {
		var devices []string
		// null reads as "every device", like an empty list.
		if err := json.Unmarshal(raw, &devices); err != nil {
			return mxhttp.BadJSON("device_keys for %s must be a list of device ids", userID)
		}
		if _, err := s.localUser(userID); err != nil {
			return mxhttp.InvalidParam("device_keys: %v", err)
		}
		want[userID] = devices
	}
	res, err := s.QueryKeys(r.Context(), req.UserID, want)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, res)
}

func (s *Service) claim(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		Timeout     *int64                       `json:"timeout"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.OneTimeKeys == nil {
		return mxhttp.BadJSON("one_time_keys must be an object")
	}
	for userID, devices := range body.OneTimeKeys {
		if _, err := s.localUser(userID); err != nil {
			return mxhttp.InvalidParam("one_time_keys: %v", err)
		}
		if devices == nil {
			return mxhttp.BadJSON("one_time_keys for %s must be an object", userID)
		}
		for deviceID, alg := range devices {
			if alg == "" {
				return mxhttp.InvalidParam("one_time_keys: no algorithm for %s/%s", userID, deviceID)
			}
		}
	}
	res, err := s.ClaimKeys(r.Context(), body.OneTimeKeys)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, res)
}

func (s *Service) changes(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	q := r.URL.Query()
	if q.Get("from") == "" {
		return mxhttp.MissingParam("Missing from")
	}
	from, err := s.reg.ParseToken(q.Get("from"))
	if err != nil {
		return mxhttp.InvalidParam("Invalid from token: %v", err)
	}
	to := s.reg.CurrentToken()
	if q.Get("to") != "" {
		if to, err = s.reg.ParseToken(q.Get("to")); err != nil {
			return mxhttp.InvalidParam("Invalid to token: %v", err)
		}
	}
	changed, left, err := s.Changes(r.Context(), req.UserID, from, to)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string][]string{"changed": changed, "left": left})
}
