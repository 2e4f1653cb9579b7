package inbound

import (
	"net/http"
	"sort"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// GET /_matrix/federation/v1/query/profile?user_id=&field=
//
// Local users only. allow_profile_lookup_over_federation: false refuses
// every lookup (403), as Synapse does.
func (s *Server) queryProfile(w http.ResponseWriter, r *http.Request) error {
	if _, err := origin(r); err != nil {
		return err
	}
	if !s.cfg.AllowProfileLookup {
		return mxhttp.Forbidden("Profile lookup over federation is disabled on this homeserver")
	}
	q := r.URL.Query()
	userID := q.Get("user_id")
	if userID == "" {
		return mxhttp.MissingParam("Missing user_id")
	}
	_, server, ok := accounts.SplitUserID(userID)
	if !ok {
		return mxhttp.InvalidParam("Invalid user_id %q", userID)
	}
	if server != s.cfg.ServerName {
		return mxhttp.InvalidParam("User %s is not hosted on this homeserver", userID)
	}
	field := q.Get("field")
	if field != "" && field != "displayname" && field != "avatar_url" {
		return mxhttp.InvalidParam("Unknown profile field %q", field)
	}
	p, err := s.profiles.GetProfile(r.Context(), userID)
	if err != nil {
		return err
	}
	if p == nil {
		return mxhttp.NotFound("Profile of %s not found", userID)
	}
	out := map[string]string{}
	if p.DisplayName != nil && (field == "" || field == "displayname") {
		out["displayname"] = *p.DisplayName
	}
	if p.AvatarURL != nil && (field == "" || field == "avatar_url") {
		out["avatar_url"] = *p.AvatarURL
	}
	return mxhttp.WriteJSON(w, http.StatusOK, out)
}

// GET /_matrix/federation/v1/query/directory?room_alias=
//
// Local aliases only; servers lists the servers with a joined user, this
// one first, as join candidates.
func (s *Server) queryDirectory(w http.ResponseWriter, r *http.Request) error {
	if _, err := origin(r); err != nil {
		return err
	}
	ctx := r.Context()
	alias := r.URL.Query().Get("room_alias")
	if alias == "" {
		return mxhttp.MissingParam("Missing room_alias")
	}
	i := strings.IndexByte(alias, ':')
	if len(alias) < 4 || alias[0] != '#' || i < 2 || i == len(alias)-1 {
		return mxhttp.InvalidParam("Invalid room alias %q", alias)
	}
	if alias[i+1:] != s.cfg.ServerName {
		return mxhttp.NotFound("Room alias %s is not hosted on this homeserver", alias)
	}
	roomID, err := s.rooms.ResolveAliasAsking(ctx, alias)
	if err != nil {
		return err
	}
	if roomID == "" {
		return mxhttp.NotFound("Room alias %s not found", alias)
	}
	members, err := s.store.JoinedMembers(ctx, roomID)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	for _, m := range members {
		if _, server, ok := accounts.SplitUserID(m); ok && server != s.cfg.ServerName {
			set[server] = true
		}
	}
	others := make([]string, 0, len(set))
	for srv := range set {
		others = append(others, srv)
	}
	sort.Strings(others)
	servers := append([]string{s.cfg.ServerName}, others...)
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"room_id": roomID, "servers": servers})
}
