package inbound

import (
	"net/http"
	"strconv"

	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// publicRoomsQuery is what GET and POST publicRooms ask.
type publicRoomsQuery struct {
	Limit                int                     `json:"limit"`
	Since                string                  `json:"since"`
	Filter               rooms.PublicRoomsFilter `json:"filter"`
	IncludeAllNetworks   bool                    `json:"include_all_networks"`
	ThirdPartyInstanceID string                  `json:"third_party_instance_id"`
}

// GET /_matrix/federation/v1/publicRooms?limit=&since=&include_all_networks=&third_party_instance_id=
func (s *Server) publicRoomsGet(w http.ResponseWriter, r *http.Request) error {
	if err := s.publicRoomsAllowed(r); err != nil {
		return err
	}
	q := r.URL.Query()
	var pq publicRoomsQuery
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			return mxhttp.InvalidParam("limit must be an integer")
		}
		pq.Limit = n
	}
	pq.Since = q.Get("since")
	switch v := q.Get("include_all_networks"); v {
	case "", "false":
	case "true":
		pq.IncludeAllNetworks = true
	default:
		return mxhttp.InvalidParam("include_all_networks must be true or false")
	}
	pq.ThirdPartyInstanceID = q.Get("third_party_instance_id")
	return s.publicRooms(w, r, pq)
}

// POST /_matrix/federation/v1/publicRooms, with the filter in the body.
func (s *Server) publicRoomsPost(w http.ResponseWriter, r *http.Request) error {
	if err := s.publicRoomsAllowed(r); err != nil {
		return err
	}
	var pq publicRoomsQuery
	if err := mxhttp.DecodeJSON(r, &pq); err != nil {
		return err
	}
	return s.publicRooms(w, r, pq)
}

// publicRoomsAllowed refuses everything unless
// allow_public_rooms_over_federation is set (Synapse's default is off: a
// server's directory is for its own users unless the operator says so).
func (s *Server) publicRoomsAllowed(r *http.Request) error {
	if _, err := origin(r); err != nil {
		return err
	}
	if !s.cfg.AllowPublicRooms {
		return mxhttp.Forbidden("Public rooms over federation are disabled on this homeserver")
	}
	return nil
}

func (s *Server) publicRooms(w http.ResponseWriter, r *http.Request, pq publicRoomsQuery) error {
	if pq.Limit < 0 {
		return mxhttp.InvalidParam("limit must not be negative")
	}
	// The directory has only this server's own network: a named
	// third-party network lists nothing, unless every network is asked
	// for, as Synapse answers for a network without published rooms.
	if pq.ThirdPartyInstanceID != "" && !pq.IncludeAllNetworks {
		return mxhttp.WriteJSON(w, http.StatusOK, &rooms.PublicRoomsPage{Chunk: []rooms.PublicRoom{}})
	}
	page, err := s.rooms.PublicRooms(r.Context(), pq.Limit, pq.Since, pq.Filter)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, page)
}
