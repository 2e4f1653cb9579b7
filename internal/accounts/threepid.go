package accounts

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/mail"
	"regexp"

	"ganglion/internal/mxhttp"
)

// Third-party identifiers (spec: "Adding Account Administrative Contact
// Information"). Ganglion can neither send the email or SMS that proves
// an address is the user's nor talk to an identity server, so what it
// honestly offers is: the list of the account's 3PIDs (user_threepids;
// nothing here adds to it), their deletion, and clear refusals for the
// endpoints that need validation or an identity server. capabilities says
// m.3pid_changes is disabled.

// clientSecretRE is the spec's client_secret grammar.
var clientSecretRE = regexp.MustCompile(`^[0-9a-zA-Z.=_-]{1,255}$`)

// ThreePID is one entry of GET /account/3pid.
type ThreePID struct {
	Medium      string `json:"medium"`
	Address     string `json:"address"`
	ValidatedAt int64  `json:"validated_at"`
	AddedAt     int64  `json:"added_at"`
}

func (h *handlers) threepidRoutes(mux *mxhttp.Mux, srv *mxhttp.Server) {
	a := func(f AuthedHandler) http.Handler { return srv.Handle(h.s.Auth(f)) }
	mux.HandleClient("GET", "/account/3pid", a(h.listThreepids))
	mux.HandleClient("POST", "/account/3pid", a(h.legacyAddThreepid))
	mux.HandleClient("POST", "/account/3pid/add", a(h.addThreepid))
	mux.HandleClient("POST", "/account/3pid/bind", a(h.bindThreepid))
	mux.HandleClient("POST", "/account/3pid/unbind", a(h.unbindThreepid))
	mux.HandleClient("POST", "/account/3pid/delete", a(h.deleteThreepid))
	mux.HandleClient("POST", "/account/3pid/email/requestToken", srv.Handle(h.emailRequestToken))
	mux.HandleClient("POST", "/account/3pid/msisdn/requestToken", srv.Handle(h.msisdnRequestToken))
}

func (h *handlers) listThreepids(w http.ResponseWriter, r *http.Request, req *Requester) error {
	rows, err := h.s.db.Reader().QueryContext(r.Context(), `SELECT medium, address, validated_at, added_at
		FROM user_threepids WHERE user_id = $1 ORDER BY medium, address`, req.UserID)
	if err != nil {
		return fmt.Errorf("list 3pids of %s: %w", req.UserID, err)
	}
	defer rows.Close()
	out := []ThreePID{}
	for rows.Next() {
		var t ThreePID
		if err := rows.Scan(&t.Medium, &t.Address, &t.ValidatedAt, &t.AddedAt); err != nil {
			return fmt.Errorf("list 3pids of %s: %w", req.UserID, err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list 3pids of %s: %w", req.UserID, err)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"threepids": out})
}

// stringFields decodes a JSON object body and returns the named string
// fields; a missing required one is M_MISSING_PARAM, a non-string one
// M_INVALID_PARAM.
func stringFields(r *http.Request, required []string, optional ...string) (map[string]string, map[string]json.RawMessage, error) {
	body, err := decodeObject(r)
	if err != nil {
		return nil, nil, err
	}
	out := map[string]string{}
	for i, k := range append(append([]string{}, required...), optional...) {
		raw, ok := body[k]
		if !ok || string(raw) == "null" {
			if i < len(required) {
				return nil, nil, mxhttp.MissingParam("Missing %s", k)
			}
			continue
		}
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, nil, mxhttp.InvalidParam("%s must be a string", k)
		}
		if v == "" && i < len(required) {
			return nil, nil, mxhttp.MissingParam("Missing %s", k)
		}
		out[k] = v
	}
	return out, body, nil
}

func checkClientSecret(s string) error {
	if !clientSecretRE.MatchString(s) {
		return mxhttp.InvalidParam("Invalid client_secret")
	}
	return nil
}

func checkMedium(m string) error {
	if m != "email" && m != "msisdn" {
		return mxhttp.InvalidParam("medium must be email or msisdn")
	}
	return nil
}

// addThreepid is POST /account/3pid/add. It needs a validation session
// that a requestToken endpoint started and the user completed; this
// server starts none, so after user-interactive auth (as the spec asks,
// so the answer does not depend on who calls) it is always refused.
func (h *handlers) addThreepid(w http.ResponseWriter, r *http.Request, req *Requester) error {
	f, body, err := stringFields(r, []string{"client_secret", "sid"})
	if err != nil {
		return err
	}
	if err := checkClientSecret(f["client_secret"]); err != nil {
		return err
	}
	var auth *AuthDict
	if raw, ok := body["auth"]; ok {
		if err := json.Unmarshal(raw, &auth); err != nil {
			return mxhttp.BadJSON("auth must be an object")
		}
	}
	if err := h.reauth(r, auth, req.UserID); err != nil {
		return err
	}
	return mxhttp.WithCode(http.StatusBadRequest, "M_THREEPID_AUTH_FAILED",
		"No validated 3pid session found: this server does not validate third-party identifiers")
}

// legacyAddThreepid is the deprecated POST /account/3pid, which adds (and
// optionally binds) with three_pid_creds from a validation session; as
// with add, there never is one.
func (h *handlers) legacyAddThreepid(w http.ResponseWriter, r *http.Request, _ *Requester) error {
	body, err := decodeObject(r)
	if err != nil {
		return err
	}
	raw, ok := body["three_pid_creds"]
	if !ok {
		raw, ok = body["threePidCreds"] // Synapse still accepts the old spelling
	}
	if !ok {
		return mxhttp.MissingParam("Missing three_pid_creds")
	}
	var creds struct {
		ClientSecret *string `json:"client_secret"`
		SID          *string `json:"sid"`
	}
	if err := json.Unmarshal(raw, &creds); err != nil {
		return mxhttp.InvalidParam("three_pid_creds must be an object with string client_secret and sid")
	}
	if creds.ClientSecret == nil || creds.SID == nil || *creds.SID == "" {
		return mxhttp.MissingParam("three_pid_creds needs client_secret and sid")
	}
	if err := checkClientSecret(*creds.ClientSecret); err != nil {
		return err
	}
	return mxhttp.WithCode(http.StatusBadRequest, "M_THREEPID_AUTH_FAILED",
		"No validated 3pid session found: this server does not validate third-party identifiers")
}

// bindThreepid is POST /account/3pid/bind: binding is done by an identity
// server, and this server trusts none.
func (h *handlers) bindThreepid(w http.ResponseWriter, r *http.Request, _ *Requester) error {
	f, _, err := stringFields(r, []string{"client_secret", "id_server", "id_access_token", "sid"})
	if err != nil {
		return err
	}
	if err := checkClientSecret(f["client_secret"]); err != nil {
		return err
	}
	return mxhttp.WithCode(http.StatusBadRequest, "M_SERVER_NOT_TRUSTED",
		"This server does not use identity servers, so it cannot bind %s", f["id_server"])
}

// unbindThreepid is POST /account/3pid/unbind: with no identity server
// there is no binding to remove, which the spec's answer for that case
// says.
func (h *handlers) unbindThreepid(w http.ResponseWriter, r *http.Request, _ *Requester) error {
	f, _, err := stringFields(r, []string{"medium", "address"}, "id_server")
	if err != nil {
		return err
	}
	if err := checkMedium(f["medium"]); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "no-support"})
}

// deleteThreepid is POST /account/3pid/delete: the 3PID leaves the
// account; no identity server is told, hence no-support.
func (h *handlers) deleteThreepid(w http.ResponseWriter, r *http.Request, req *Requester) error {
	f, _, err := stringFields(r, []string{"medium", "address"}, "id_server")
	if err != nil {
		return err
	}
	if err := checkMedium(f["medium"]); err != nil {
		return err
	}
	res, err := h.s.db.Exec(r.Context(), `DELETE FROM user_threepids WHERE user_id = $1 AND medium = $2 AND address = $3`,
		req.UserID, f["medium"], f["address"])
	if err != nil {
		return fmt.Errorf("delete 3pid of %s: %w", req.UserID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return mxhttp.WithCode(http.StatusBadRequest, "M_THREEPID_NOT_FOUND", "%s %s is not one of your third-party identifiers", f["medium"], f["address"])
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "no-support"})
}

// sendAttempt checks send_attempt: required, an integer.
func sendAttempt(body map[string]json.RawMessage) error {
	raw, ok := body["send_attempt"]
	if !ok {
		return mxhttp.MissingParam("Missing send_attempt")
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return mxhttp.InvalidParam("send_attempt must be an integer")
	}
	if _, err := n.Int64(); err != nil {
		return mxhttp.InvalidParam("send_attempt must be an integer")
	}
	return nil
}

// emailRequestToken is POST /account/3pid/email/requestToken. The request
// is checked as the spec describes it, then refused with the spec's
// M_THREEPID_DENIED: this server sends no validation email.
func (h *handlers) emailRequestToken(w http.ResponseWriter, r *http.Request) error {
	f, body, err := stringFields(r, []string{"client_secret", "email"}, "next_link", "id_server", "id_access_token")
	if err != nil {
		return err
	}
	if err := checkClientSecret(f["client_secret"]); err != nil {
		return err
	}
	if err := sendAttempt(body); err != nil {
		return err
	}
	if a, err := mail.ParseAddress(f["email"]); err != nil || a.Address != f["email"] {
		return mxhttp.InvalidParam("Invalid email address")
	}
	return mxhttp.WithCode(http.StatusForbidden, "M_THREEPID_DENIED",
		"This server cannot verify email addresses (it sends no validation email and uses no identity server)")
}

// msisdnRequestToken is POST /account/3pid/msisdn/requestToken, refused
// as emailRequestToken: this server sends no SMS.
func (h *handlers) msisdnRequestToken(w http.ResponseWriter, r *http.Request) error {
	f, body, err := stringFields(r, []string{"client_secret", "country", "phone_number"}, "next_link", "id_server", "id_access_token")
	if err != nil {
		return err
	}
	if err := checkClientSecret(f["client_secret"]); err != nil {
		return err
	}
	if err := sendAttempt(body); err != nil {
		return err
	}
	return mxhttp.WithCode(http.StatusForbidden, "M_THREEPID_DENIED",
		"This server cannot verify phone numbers (it sends no SMS and uses no identity server)")
}
