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
	s.backupRoutes(mux, srv, acc)
	h := &csHandlers{s: s, acc: acc}
	// v3 and the unstable prefix older clients still use; never under r0.
	for _, prefix := range []string{"/_matrix/client/v3", "/_matrix/client/unstable"} {
		mux.Handle("POST "+prefix+"/keys/device_signing/upload", srv.Handle(acc.Auth(h.uploadSigningKeys)))
		mux.Handle("POST "+prefix+"/keys/signatures/upload", srv.Handle(acc.Auth(h.uploadSignatures)))
	}
}

type csHandlers struct {
	s   *Service
	acc *accounts.Service
}

func (h *csHandlers) uploadSigningKeys(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		SigningKeysUpload
		Auth *accounts.AuthDict `json:"auth"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	changes, replaces, err := h.s.CheckSigningKeys(r.Context(), req.UserID, body.SigningKeysUpload)
	if err != nil {
		return err
	}
	// Replacing keys would let a stolen access token take over the
	// account's identity: prove it is the user. The first upload and an
	// identical re-upload need nothing (MSC3967).
	if replaces {
		if err := h.acc.RunUIA(r.Context(), body.Auth, accounts.Flows{{accounts.StagePassword}}, req.UserID); err != nil {
			return err
		}
	}
	if err := h.s.StoreSigningKeys(r.Context(), req.UserID, changes); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func (h *csHandlers) uploadSignatures(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body map[string]map[string]json.RawMessage
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	for userID, objs := range body {
		if objs == nil {
			return mxhttp.BadJSON("signatures for %s must be an object", userID)
		}
	}
	failures, err := h.s.UploadSignatures(r.Context(), req.UserID, body)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"failures": failures})
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
	res, err := s.QueryKeysTimeout(r.Context(), req.UserID, want, RemoteTimeout(body.Timeout))
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
	res, err := s.ClaimKeysTimeout(r.Context(), body.OneTimeKeys, RemoteTimeout(body.Timeout))
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
