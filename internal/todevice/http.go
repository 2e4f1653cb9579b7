package todevice

import (
	"encoding/json"
	"net/http"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// Routes registers PUT /sendToDevice.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("PUT", "/sendToDevice/{eventType}/{txnId}", srv.Handle(acc.Auth(s.sendToDevice)))
}

func (s *Service) sendToDevice(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if err := CheckMessages(body.Messages); err != nil {
		return err
	}
	eventType := r.PathValue("eventType")
	if eventType == "" || len(eventType) > 255 {
		return mxhttp.InvalidParam("Invalid event type")
	}
	if err := s.w.Send(r.Context(), req.UserID, req.DeviceID, r.PathValue("txnId"), eventType, body.Messages); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

// CheckMessages validates the messages of a send: present, keyed by user
// ids, each message a JSON object.
func CheckMessages(messages map[string]map[string]json.RawMessage) error {
	if messages == nil {
		return mxhttp.BadJSON("messages must be an object")
	}
	for userID, byDevice := range messages {
		if _, _, ok := splitUserID(userID); !ok {
			return mxhttp.InvalidParam("Invalid user id %q", userID)
		}
		if byDevice == nil {
			return mxhttp.BadJSON("messages for %s must be an object", userID)
		}
		for deviceID, content := range byDevice {
			var obj map[string]json.RawMessage
			if json.Unmarshal(content, &obj) != nil || obj == nil {
				return mxhttp.BadJSON("message for %s/%s must be an object", userID, deviceID)
			}
		}
	}
	return nil
}
