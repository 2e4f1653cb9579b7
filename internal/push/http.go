package push

import (
	"encoding/json"
	"net/http"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// Routes registers the push rules endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	a := func(h accounts.AuthedHandler) http.Handler { return srv.Handle(acc.Auth(h)) }
	mux.HandleClient("GET", "/pushrules/{$}", a(s.getAll))
	mux.HandleClient("GET", "/pushrules/{scope}/{$}", a(s.getScope))
	mux.HandleClient("GET", "/pushrules/{scope}/{kind}/{$}", a(s.getKind))
	mux.HandleClient("GET", "/pushrules/{scope}/{kind}/{ruleId}", a(s.rule(s.getRule)))
	mux.HandleClient("PUT", "/pushrules/{scope}/{kind}/{ruleId}", a(s.rule(s.putRule)))
	mux.HandleClient("DELETE", "/pushrules/{scope}/{kind}/{ruleId}", a(s.rule(s.deleteRule)))
	mux.HandleClient("GET", "/pushrules/{scope}/{kind}/{ruleId}/{attr}", a(s.rule(s.getAttr)))
	mux.HandleClient("PUT", "/pushrules/{scope}/{kind}/{ruleId}/{attr}", a(s.rule(s.putAttr)))
}

func (s *Service) getAll(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	rs, err := s.Ruleset(r.Context(), req.UserID)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, Global{Global: rs})
}

func checkScope(r *http.Request) error {
	if sc := r.PathValue("scope"); sc != "global" {
		return mxhttp.InvalidParam("Unknown push rules scope %q", sc)
	}
	return nil
}

func pathKind(r *http.Request) (Kind, error) {
	k, ok := ParseKind(r.PathValue("kind"))
	if !ok {
		return "", mxhttp.InvalidParam("Unknown push rule kind %q", r.PathValue("kind"))
	}
	return k, nil
}

func (s *Service) getScope(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	if err := checkScope(r); err != nil {
		return err
	}
	rs, err := s.Ruleset(r.Context(), req.UserID)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, rs)
}

func (s *Service) getKind(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	if err := checkScope(r); err != nil {
		return err
	}
	k, err := pathKind(r)
	if err != nil {
		return err
	}
	rs, err := s.Ruleset(r.Context(), req.UserID)
	if err != nil {
		return err
	}
	rules := rs[k]
	if rules == nil {
		rules = []Rule{}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, rules)
}

// ruleHandler serves one rule named by the path.
type ruleHandler func(w http.ResponseWriter, r *http.Request, userID string, k Kind, ruleID string) error

func (s *Service) rule(h ruleHandler) accounts.AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
		if err := checkScope(r); err != nil {
			return err
		}
		k, err := pathKind(r)
		if err != nil {
			return err
		}
		id := r.PathValue("ruleId")
		if id == "" || len(id) > 255 || strings.ContainsAny(id, `/\`) {
			return mxhttp.InvalidParam("Invalid push rule id %q", id)
		}
		return h(w, r, req.UserID, k, id)
	}
}

func (s *Service) find(r *http.Request, userID string, k Kind, ruleID string) (Rule, error) {
	rs, err := s.Ruleset(r.Context(), userID)
	if err != nil {
		return Rule{}, err
	}
	rule, ok := rs.Find(k, ruleID)
	if !ok {
		return Rule{}, mxhttp.NotFound("Unknown push rule %s/%s", k, ruleID)
	}
	return rule, nil
}

func (s *Service) getRule(w http.ResponseWriter, r *http.Request, userID string, k Kind, ruleID string) error {
	rule, err := s.find(r, userID, k, ruleID)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, rule)
}

func (s *Service) deleteRule(w http.ResponseWriter, r *http.Request, userID string, k Kind, ruleID string) error {
	if _, err := s.Apply(r.Context(), userID, Op{Op: OpDelete, Kind: k, RuleID: ruleID}); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) putRule(w http.ResponseWriter, r *http.Request, userID string, k Kind, ruleID string) error {
	body, err := readObject(r)
	if err != nil {
		return err
	}
	op := Op{Op: OpPut, Kind: k, RuleID: ruleID, Before: r.URL.Query().Get("before"), After: r.URL.Query().Get("after")}
	if op.Actions, err = parseActions(body["actions"]); err != nil {
		return err
	}
	switch {
	case k.hasConditions():
		op.Conditions = json.RawMessage(`[]`)
		if c, ok := body["conditions"]; ok {
			if op.Conditions, err = parseConditions(c); err != nil {
				return err
			}
		}
	case k == Content:
		var p *string
		if json.Unmarshal(body["pattern"], &p) != nil || p == nil {
			return mxhttp.BadJSON("Content rules need a string pattern")
		}
		op.Pattern = p
	}
	if _, err := s.Apply(r.Context(), userID, op); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) getAttr(w http.ResponseWriter, r *http.Request, userID string, k Kind, ruleID string) error {
	attr := r.PathValue("attr")
	if attr != "enabled" && attr != "actions" {
		return mxhttp.Unrecognized(http.StatusNotFound, "Unrecognized request")
	}
	rule, err := s.find(r, userID, k, ruleID)
	if err != nil {
		return err
	}
	if attr == "enabled" {
		return mxhttp.WriteJSON(w, http.StatusOK, map[string]bool{"enabled": rule.Enabled})
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string][]json.RawMessage{"actions": rule.Actions})
}

func (s *Service) putAttr(w http.ResponseWriter, r *http.Request, userID string, k Kind, ruleID string) error {
	attr := r.PathValue("attr")
	if attr != "enabled" && attr != "actions" {
		return mxhttp.Unrecognized(http.StatusNotFound, "Unrecognized request")
	}
	body, err := readObject(r)
	if err != nil {
		return err
	}
	op := Op{Kind: k, RuleID: ruleID}
	if attr == "enabled" {
		var en *bool
		if json.Unmarshal(body["enabled"], &en) != nil || en == nil {
			return mxhttp.BadJSON("enabled must be a boolean")
		}
		op.Op, op.Enabled = OpSetEnabled, *en
	} else {
		op.Op = OpSetActions
		if op.Actions, err = parseActions(body["actions"]); err != nil {
			return err
		}
	}
	if _, err := s.Apply(r.Context(), userID, op); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func readObject(r *http.Request) (map[string]json.RawMessage, error) {
	body, err := mxhttp.ReadBody(r, mxhttp.DefaultMaxBody)
	if err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := mxhttp.DecodeJSONBytes(r, body, &obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, mxhttp.NotJSON("Content must be a JSON object.")
	}
	return obj, nil
}

// parseActions checks a rule's actions: a list of "notify" or the legacy
// "dont_notify" / "coalesce", and tweak objects with a string set_tweak.
func parseActions(raw json.RawMessage) ([]json.RawMessage, error) {
	var list []json.RawMessage
	if raw == nil || json.Unmarshal(raw, &list) != nil || list == nil {
		return nil, mxhttp.BadJSON("actions must be a list")
	}
	for _, a := range list {
		var s string
		if json.Unmarshal(a, &s) == nil {
			if s != "notify" && s != "dont_notify" && s != "coalesce" {
				return nil, mxhttp.BadJSON("Unknown action %q", s)
			}
			continue
		}
		var t map[string]json.RawMessage
		var tweak string
		if json.Unmarshal(a, &t) != nil || t == nil || json.Unmarshal(t["set_tweak"], &tweak) != nil || tweak == "" {
			return nil, mxhttp.BadJSON("Each action must be a string or an object with set_tweak")
		}
	}
	return list, nil
}

// parseConditions checks that conditions is a list of objects with a
// string kind; unknown kinds are kept (they never match).
func parseConditions(raw json.RawMessage) (json.RawMessage, error) {
	var list []map[string]json.RawMessage
	if json.Unmarshal(raw, &list) != nil || list == nil {
		return nil, mxhttp.BadJSON("conditions must be a list of objects")
	}
	for _, c := range list {
		var kind string
		if c == nil || json.Unmarshal(c["kind"], &kind) != nil || kind == "" {
			return nil, mxhttp.BadJSON("Each condition needs a string kind")
		}
	}
	return raw, nil
}
