package app

import (
	"net/http"

	"ganglion/internal/accounts"
	"ganglion/internal/config"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
)

// specVersions are the client-server API versions we implement enough of
// for clients to use us.
var specVersions = []string{"r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"}

// infoRoutes serves what describes the server rather than a domain:
// versions, capabilities, health and client well-known.
func infoRoutes(mux *mxhttp.Mux, srv *mxhttp.Server, cfg *config.Config, acc *accounts.Service) {
	mux.Handle("GET /_matrix/client/versions", srv.Handle(func(w http.ResponseWriter, r *http.Request) error {
		return mxhttp.WriteJSON(w, 200, map[string]any{"versions": specVersions, "unstable_features": map[string]bool{}})
	}))
	defaultVersion := cfg.DefaultRoomVersion
	if defaultVersion == "" {
		defaultVersion = events.DefaultRoomVersion
	}
	mux.HandleClient("GET", "/capabilities", srv.Handle(acc.Auth(func(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
		available := map[string]string{}
		for _, v := range events.SupportedRoomVersions() {
			available[v] = "stable"
		}
		return mxhttp.WriteJSON(w, 200, map[string]any{"capabilities": map[string]any{
			"m.change_password": map[string]bool{"enabled": cfg.PasswordConfig.Enabled.ForReauth()},
			"m.room_versions":   map[string]any{"default": defaultVersion, "available": available},
			"m.set_displayname": map[string]bool{"enabled": true},
			"m.set_avatar_url":  map[string]bool{"enabled": true},
			"m.3pid_changes":    map[string]bool{"enabled": false},
			"m.get_login_token": map[string]bool{"enabled": false},
		}})
	})))
	mux.Handle("GET /health", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("OK"))
	}))
	if cfg.PublicBaseURL != "" {
		mux.Handle("GET /.well-known/matrix/client", srv.Handle(func(w http.ResponseWriter, r *http.Request) error {
			return mxhttp.WriteJSON(w, 200, map[string]any{"m.homeserver": map[string]string{"base_url": cfg.PublicBaseURL}})
		}))
	}
}
