// Package appservice implements application services (the Application
// Service API): registration files, authentication with as_token and
// masquerading, namespace exclusivity, the durable transaction queue that
// one instance sends to each service, pings, user and alias queries and the
// third-party lookups proxied to services.
package appservice

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Registration is one application service's registration file, with
// Synapse's keys.
type Registration struct {
	ID              string
	URL             string // empty: the service receives no transactions
	ASToken         string
	HSToken         string
	SenderLocalpart string
	Users           []Namespace
	Aliases         []Namespace
	Rooms           []Namespace
	RateLimited     bool
	Protocols       []string
	// ReceiveEphemeral is MSC2409 (receive_ephemeral, or the unstable
	// de.sorunome.msc2409.push_ephemeral): typing, receipts and presence.
	ReceiveEphemeral bool
	// Path is the file the registration came from, for messages.
	Path string
}

// Namespace is one regex of a registration's namespaces. As in Synapse
// (Python's re.match), the regex is anchored at the start of the id only;
// services write ^…$ to anchor both ends.
type Namespace struct {
	Exclusive bool
	Regex     *regexp.Regexp
}

// rawRegistration is the file as YAML; pointers tell unset from empty.
type rawRegistration struct {
	ID              *string `yaml:"id"`
	URL             *string `yaml:"url"`
	ASToken         *string `yaml:"as_token"`
	HSToken         *string `yaml:"hs_token"`
	SenderLocalpart *string `yaml:"sender_localpart"`
	Namespaces      struct {
		Users   []rawNamespace `yaml:"users"`
		Aliases []rawNamespace `yaml:"aliases"`
		Rooms   []rawNamespace `yaml:"rooms"`
	} `yaml:"namespaces"`
	RateLimited      *bool    `yaml:"rate_limited"`
	Protocols        []string `yaml:"protocols"`
	ReceiveEphemeral *bool    `yaml:"receive_ephemeral"`
	PushEphemeral    *bool    `yaml:"de.sorunome.msc2409.push_ephemeral"`
}

type rawNamespace struct {
	Exclusive *bool   `yaml:"exclusive"`
	Regex     *string `yaml:"regex"`
}

// ConfigError lists every problem of the registration files, each with
// the file and the key, so an operator fixes them all in one pass.
type ConfigError struct {
	Problems []string
}

func (e *ConfigError) Error() string {
	return "app_service_config_files:\n" + strings.Join(e.Problems, "\n")
}

// LoadRegistrations reads and checks the files of app_service_config_files.
// Any problem in any file refuses them all: a service half-registered
// (say, without its namespaces) would be handed other users' traffic or
// none of its own.
func LoadRegistrations(paths []string) ([]*Registration, error) {
	var probs []string
	add := func(path, key, format string, args ...any) {
		loc := path
		if key != "" {
			loc += ": " + key
		}
		probs = append(probs, loc+": "+fmt.Sprintf(format, args...))
	}
	var out []*Registration
	seenPath := map[string]bool{}
	for i, p := range paths {
		if seenPath[p] {
			add(fmt.Sprintf("app_service_config_files[%d]", i), "", "%s listed twice", p)
			continue
		}
		seenPath[p] = true
		data, err := os.ReadFile(p)
		if err != nil {
			add(fmt.Sprintf("app_service_config_files[%d]", i), "", "cannot read: %v", err)
			continue
		}
		reg, fileProbs := parseRegistration(p, data)
		for _, fp := range fileProbs {
			add(p, fp[0], "%s", fp[1])
		}
		if reg != nil {
			out = append(out, reg)
		}
	}
	// Tokens and ids identify a service on every request: two services
	// sharing one would each act with the other's rights.
	ids, asTokens, hsTokens := map[string]string{}, map[string]string{}, map[string]string{}
	for _, r := range out {
		if prev, ok := ids[r.ID]; ok {
			add(r.Path, "id", "%q is also the id of %s", r.ID, prev)
		}
		ids[r.ID] = r.Path
		if prev, ok := asTokens[r.ASToken]; ok {
			add(r.Path, "as_token", "also the as_token of %s", prev)
		}
		asTokens[r.ASToken] = r.Path
		if prev, ok := hsTokens[r.HSToken]; ok {
			add(r.Path, "hs_token", "also the hs_token of %s", prev)
		}
		hsTokens[r.HSToken] = r.Path
	}
	if len(probs) > 0 {
		return nil, &ConfigError{Problems: probs}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// parseRegistration checks one file; problems are (key, message) pairs.
func parseRegistration(path string, data []byte) (*Registration, [][2]string) {
	var probs [][2]string
	add := func(key, format string, args ...any) {
		probs = append(probs, [2]string{key, fmt.Sprintf(format, args...)})
	}
	var raw rawRegistration
	if err := yaml.Unmarshal(data, &raw); err != nil {
		add("", "invalid YAML: %v", err)
		return nil, probs
	}
	r := &Registration{Path: path, RateLimited: true, Protocols: raw.Protocols}
	required := func(key string, v *string, dst *string) {
		if v == nil || strings.TrimSpace(*v) == "" {
			add(key, "required")
			return
		}
		*dst = *v
	}
	required("id", raw.ID, &r.ID)
	required("as_token", raw.ASToken, &r.ASToken)
	required("hs_token", raw.HSToken, &r.HSToken)
	required("sender_localpart", raw.SenderLocalpart, &r.SenderLocalpart)
	if r.ASToken != "" && r.ASToken == r.HSToken {
		add("hs_token", "must differ from as_token: the service could not tell the homeserver from a client")
	}
	// Synapse requires the key; null means no transactions.
	var keys map[string]any
	_ = yaml.Unmarshal(data, &keys)
	if _, present := keys["url"]; !present {
		add("url", "required (null for a service that receives no transactions)")
	} else if raw.URL != nil && *raw.URL != "" {
		if !strings.HasPrefix(*raw.URL, "http://") && !strings.HasPrefix(*raw.URL, "https://") {
			add("url", "must be an http:// or https:// URL, got %q", *raw.URL)
		}
		r.URL = strings.TrimRight(*raw.URL, "/")
	}
	if raw.RateLimited != nil {
		r.RateLimited = *raw.RateLimited
	}
	if raw.ReceiveEphemeral != nil {
		r.ReceiveEphemeral = *raw.ReceiveEphemeral
	}
	if raw.PushEphemeral != nil && *raw.PushEphemeral {
		r.ReceiveEphemeral = true
	}
	for i, p := range raw.Protocols {
		if p == "" {
			add(fmt.Sprintf("protocols[%d]", i), "empty protocol name")
		}
	}
	ns := func(kind string, in []rawNamespace) []Namespace {
		var out []Namespace
		for i, n := range in {
			key := fmt.Sprintf("namespaces.%s[%d]", kind, i)
			if n.Regex == nil || *n.Regex == "" {
				add(key+".regex", "required")
				continue
			}
			if n.Exclusive == nil {
				add(key+".exclusive", "required (true or false)")
				continue
			}
			re, err := regexp.Compile(`^(?:` + *n.Regex + `)`)
			if err != nil {
				add(key+".regex", "invalid regex %q: %v", *n.Regex, err)
				continue
			}
			out = append(out, Namespace{Exclusive: *n.Exclusive, Regex: re})
		}
		return out
	}
	r.Users = ns("users", raw.Namespaces.Users)
	r.Aliases = ns("aliases", raw.Namespaces.Aliases)
	r.Rooms = ns("rooms", raw.Namespaces.Rooms)
	if len(probs) > 0 {
		return nil, probs
	}
	return r, nil
}

// matches reports whether any namespace matches s; exclusiveOnly limits to
// exclusive ones.
func matches(nss []Namespace, s string, exclusiveOnly bool) bool {
	for _, n := range nss {
		if (!exclusiveOnly || n.Exclusive) && n.Regex.MatchString(s) {
			return true
		}
	}
	return false
}

// SenderUserID is the service's own user.
func (r *Registration) SenderUserID(serverName string) string {
	return "@" + r.SenderLocalpart + ":" + serverName
}

// IsInterestedInUser reports whether userID is in the user namespace or is
// the service's sender.
func (r *Registration) IsInterestedInUser(userID, serverName string) bool {
	return userID == r.SenderUserID(serverName) || matches(r.Users, userID, false)
}

// IsInterestedInAlias reports whether the alias is in the alias namespace.
func (r *Registration) IsInterestedInAlias(alias string) bool {
	return matches(r.Aliases, alias, false)
}

// IsInterestedInRoom reports whether the room id is in the rooms namespace.
func (r *Registration) IsInterestedInRoom(roomID string) bool { return matches(r.Rooms, roomID, false) }

// HasProtocol reports whether the service lists the third-party protocol.
func (r *Registration) HasProtocol(p string) bool {
	for _, x := range r.Protocols {
		if x == p {
			return true
		}
	}
	return false
}
