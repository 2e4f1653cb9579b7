package accountdata

import (
	"encoding/json"
	"math"
	"net/http"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// msc3391Prefix is where account data deletion is served. MSC3391 was
// closed without entering the spec, so there is no stable path; clients
// that delete (matrix-js-sdk) use this unstable one, as Synapse serves it.
const msc3391Prefix = "/_matrix/client/unstable/org.matrix.msc3391"

// maxTagBytes is the spec's limit on a tag name.
const maxTagBytes = 255

// Routes registers the account data and room tag endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	a := func(room bool, h scopedHandler) http.Handler { return srv.Handle(acc.Auth(scoped(room, h))) }
	mux.HandleClient("GET", "/user/{userId}/account_data/{type}", a(false, s.getAccountData))
	mux.HandleClient("PUT", "/user/{userId}/account_data/{type}", a(false, s.putAccountData))
	mux.HandleClient("GET", "/user/{userId}/rooms/{roomId}/account_data/{type}", a(true, s.getAccountData))
	mux.HandleClient("PUT", "/user/{userId}/rooms/{roomId}/account_data/{type}", a(true, s.putAccountData))
	mux.HandleClient("GET", "/user/{userId}/rooms/{roomId}/tags", a(true, s.getTags))
	mux.HandleClient("PUT", "/user/{userId}/rooms/{roomId}/tags/{tag}", a(true, s.putTag))
	mux.HandleClient("DELETE", "/user/{userId}/rooms/{roomId}/tags/{tag}", a(true, s.deleteTag))
	mux.Handle("DELETE "+msc3391Prefix+"/user/{userId}/account_data/{type}", a(false, s.deleteAccountData))
	mux.Handle("DELETE "+msc3391Prefix+"/user/{userId}/rooms/{roomId}/account_data/{type}", a(true, s.deleteAccountData))
}

// scopedHandler serves one user's account data, globally (roomID "") or
// for one room.
type scopedHandler func(w http.ResponseWriter, r *http.Request, userID, roomID string) error

// scoped checks the path: only one's own account data may be read or
// written, and a room id must look like one.
func scoped(room bool, h scopedHandler) accounts.AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
		userID := r.PathValue("userId")
		if userID != req.UserID {
			return mxhttp.Forbidden("Cannot access account data of other users.")
		}
		var roomID string
		if room {
			roomID = r.PathValue("roomId")
			if !validRoomID(roomID) {
				return mxhttp.InvalidParam("%q is not a valid room ID.", roomID)
			}
		}
		return h(w, r, userID, roomID)
	}
}

func (s *Service) getAccountData(w http.ResponseWriter, r *http.Request, userID, roomID string) error {
	content, err := s.Get(r.Context(), userID, roomID, r.PathValue("type"))
	if err != nil {
		return err
	}
	if content == nil {
		if roomID != "" {
			return mxhttp.NotFound("Room account data not found.")
		}
		return mxhttp.NotFound("Account data not found.")
	}
	return mxhttp.WriteJSON(w, http.StatusOK, content)
}

func (s *Service) putAccountData(w http.ResponseWriter, r *http.Request, userID, roomID string) error {
	body, err := mxhttp.ReadBody(r, mxhttp.DefaultMaxBody)
	if err != nil {
		return err
	}
	var obj map[string]json.RawMessage
	if err := mxhttp.DecodeJSONBytes(r, body, &obj); err != nil {
		return err
	}
	if len(obj) == 0 {
		body = []byte("{}") // an empty body too, which DecodeJSONBytes reads as {}
	}
	if _, err := s.Set(r.Context(), userID, roomID, r.PathValue("type"), body); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) deleteAccountData(w http.ResponseWriter, r *http.Request, userID, roomID string) error {
	if _, err := s.Delete(r.Context(), userID, roomID, r.PathValue("type")); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) getTags(w http.ResponseWriter, r *http.Request, userID, roomID string) error {
	tags, err := s.Tags(r.Context(), userID, roomID)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"tags": tags})
}

func (s *Service) putTag(w http.ResponseWriter, r *http.Request, userID, roomID string) error {
	tag := r.PathValue("tag")
	body, err := mxhttp.ReadBody(r, mxhttp.DefaultMaxBody)
	if err != nil {
		return err
	}
	var obj map[string]json.RawMessage
	if err := mxhttp.DecodeJSONBytes(r, body, &obj); err != nil {
		return err
	}
	content, err := CheckTag(tag, obj)
	if err != nil {
		return err
	}
	if _, err := s.w.PutTag(r.Context(), userID, roomID, tag, content); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) deleteTag(w http.ResponseWriter, r *http.Request, userID, roomID string) error {
	tag := r.PathValue("tag")
	if tag == "" || len(tag) > maxTagBytes {
		return mxhttp.InvalidParam("Tag names must be 1 to %d bytes", maxTagBytes)
	}
	if _, err := s.w.RemoveTag(r.Context(), userID, roomID, tag); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

// CheckTag validates a tag name and its object (order, if present, is a
// number in [0, 1]) and returns the object to store.
func CheckTag(tag string, obj map[string]json.RawMessage) (json.RawMessage, error) {
	if tag == "" || len(tag) > maxTagBytes {
		return nil, mxhttp.InvalidParam("Tag names must be 1 to %d bytes", maxTagBytes)
	}
	if obj == nil {
		obj = map[string]json.RawMessage{}
	}
	if raw, ok := obj["order"]; ok {
		var order float64
		if err := json.Unmarshal(raw, &order); err != nil || math.IsNaN(order) || order < 0 || order > 1 {
			return nil, mxhttp.BadJSON("order must be a number between 0 and 1")
		}
	}
	content, err := json.Marshal(obj)
	if err != nil {
		return nil, mxhttp.BadJSON("Invalid tag content: %v", err)
	}
	return content, nil
}
