package app

import (
	"net/http"

	"ganglion/internal/mxhttp"
	"ganglion/internal/version"
)

// federationInfoRoutes serves what the federation API says about the
// server itself. GET /_matrix/federation/v1/version is unauthenticated in
// the spec: any server (or tester) may ask which implementation this is.
func federationInfoRoutes(mux *mxhttp.Mux, srv *mxhttp.Server) {
	mux.Handle("GET /_matrix/federation/v1/version", srv.Handle(func(w http.ResponseWriter, r *http.Request) error {
		return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{
			"server": map[string]string{"name": version.Name, "version": version.String()},
		})
	}))
}
