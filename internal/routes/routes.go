// Package routes is the routing table of a Ganglion fleet: every endpoint
// class of Synapse's workers document (v1.83) with its path patterns, the
// methods it takes, which duty can serve it and how requests are balanced.
// It is the one place this knowledge lives; worker listeners (Allowed), the
// router (internal/router) and the generated nginx config read it.
//
// Patterns are Synapse's regular expressions, anchored as Synapse writes them
// (a leading ^, a trailing $ only where Synapse has one). They are valid in
// Go's RE2 and in nginx's PCRE, so the same strings go into nginx locations.
// A path belongs to the first class whose pattern matches (as nginx picks the
// first matching regex location), so the order of the table is part of the
// data: classes with prefix-specific patterns come before classes whose
// patterns start with a greedy /rooms/.*/ or /.*/.
package routes

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"ganglion/internal/config"
)

// Duty says which processes can serve a class.
type Duty string

const (
	// DutyGeneric: any generic worker, and the main process.
	DutyGeneric Duty = "generic"
	// DutyStreamWriter: any generic worker (writes are forwarded over HTTP
	// replication), best served by the writer of Class.Stream, which saves
	// a hop.
	DutyStreamWriter Duty = "stream_writer"
	// DutyUserDirectory: generic workers and the legacy user_dir app.
	DutyUserDirectory Duty = "user_directory"
	// DutyMedia: media_repository workers, the main process, and generic
	// workers that load the media repository.
	DutyMedia Duty = "media"
	// DutySSO: any generic worker, but one process for every SSO request,
	// since an SSO flow keeps state in the process that started it.
	DutySSO Duty = "sso"
	// DutyMain: only the main process.
	DutyMain Duty = "main"
	// DutyAny: every process that has a client listener.
	DutyAny Duty = "any"
)

// Policy says how the router spreads a class's requests over its backends.
type Policy string

const (
	// RoundRobin over the healthy backends.
	RoundRobin Policy = "round_robin"
	// StickyUser hashes the owner of the access token (the localpart
	// encoded in our tokens), so one user's syncs hit one worker's caches.
	StickyUser Policy = "sticky_user"
	// StickyOrigin hashes the origin server of a federation request (the
	// X-Matrix Authorization header), so one server's transactions are
	// processed in order by one worker.
	StickyOrigin Policy = "sticky_origin"
	// ByRoom hashes the room id (the path component after /rooms/, /join/
	// or /knock/), so one room's sends or pagination share a worker.
	ByRoom Policy = "by_room"
	// ToStreamWriter sends the request to the writer of Class.Stream.
	ToStreamWriter Policy = "stream_writer"
	// Single sends every request to one process.
	Single Policy = "single"
)

// BodyLimit names the request size limit that applies to a class.
type BodyLimit string

const (
	LimitJSON       BodyLimit = "json"
	LimitFederation BodyLimit = "federation"
	LimitMedia      BodyLimit = "media"
)

// Pool names used by the table. A router config assigns instances to them;
// a class uses the first pool of its chain that is configured, later ones
// (and finally the main process) when all of its members are down.
const (
	PoolSync              = "sync"
	PoolInitialSync       = "initial_sync"
	PoolFederation        = "federation"
	PoolFederationInbound = "federation_inbound"
	PoolClient            = "client"
	PoolEncryption        = "encryption"
	PoolRegistration      = "registration"
	PoolEvents            = "events"
	PoolPagination        = "pagination"
	PoolUserDirectory     = "user_directory"
	PoolMedia             = "media"
	PoolSSO               = "sso"
)

// Class is one endpoint class. The table is immutable: Classify and
// Classes hand out pointers into it, which callers must only read.
type Class struct {
	// Name is a stable snake_case identifier (metrics labels, nginx
	// upstream names, config errors).
	Name string
	// Patterns are the path regexes.
	Patterns []string
	// Methods are the methods this class routes; nil means any. HEAD is
	// accepted wherever GET is, OPTIONS (CORS preflight) everywhere.
	Methods []string
	// Else names the class that routes the other methods on these paths
	// (push rules: GET on workers, writes on main). Empty means another
	// method is 405 M_UNRECOGNIZED.
	Else string
	Duty Duty
	// Stream is the stream whose writer should get the requests
	// (DutyStreamWriter and ToStreamWriter only).
	Stream string
	Policy Policy
	// Pools is the preference chain of router pools; the main process is
	// the implicit last resort.
	Pools []string
	// InitialPools, when set, replace Pools for a request without a since
	// query parameter: an initial sync, expensive and kept apart so it
	// cannot starve incremental syncs.
	InitialPools []string
	// Body is the request size limit that applies.
	Body BodyLimit
	// Resource is the listener resource that serves the class (client,
	// federation, keys, media).
	Resource string

	// filters hold, per pattern, literals every match must contain; they
	// reject most patterns with a few string compares before the regex
	// runs, which keeps Classify cheap enough to run on every request.
	filters []literalFilter
}

// Match reports whether path is one of this class's paths (regardless of
// method).
func (c *Class) Match(path string) bool {
	for _, f := range c.filters {
		if f.mayMatch(path) && f.re.MatchString(path) {
			return true
		}
	}
	return false
}

// AllowsMethod reports whether this class routes method.
func (c *Class) AllowsMethod(method string) bool {
	if c.Methods == nil || method == "OPTIONS" {
		return true
	}
	if method == "HEAD" && slices.Contains(c.Methods, "GET") {
		return true
	}
	return slices.Contains(c.Methods, method)
}

// AllowedMethods lists the methods AllowsMethod accepts (nil for any), in
// a stable order, for Allow headers and nginx.
func (c *Class) AllowedMethods() []string {
	if c.Methods == nil {
		return nil
	}
	out := slices.Clone(c.Methods)
	if slices.Contains(out, "GET") && !slices.Contains(out, "HEAD") {
		out = append(out, "HEAD")
	}
	if !slices.Contains(out, "OPTIONS") {
		out = append(out, "OPTIONS")
	}
	return out
}

// ServableBy reports whether a process of role (a config.Role* value) can
// serve this class.
func (c *Class) ServableBy(role string) bool {
	switch role {
	case config.RoleMain:
		return true
	case config.RoleGenericWorker:
		return c.Duty != DutyMain
	case config.RoleMediaRepository:
		return c.Duty == DutyMedia || c.Duty == DutyAny
	case config.RoleUserDir:
		return c.Duty == DutyUserDirectory || c.Duty == DutyAny
	}
	return c.Duty == DutyAny
}

// MainOnly is the name of the fallback class: every Matrix path no other
// class claims is served by the main process only.
const MainOnly = "main_only"

// Version prefixes, verbatim from Synapse's lists.
const (
	cAll   = "^/_matrix/client/(api/v1|r0|v3|unstable)"
	cR0    = "^/_matrix/client/(r0|v3|unstable)"
	cSync  = "^/_matrix/client/(r0|v3)"
	cLegcy = "^/_matrix/client/(api/v1|r0|v3)"
)

// spec is the table as written. The order is the match order.
func spec() []Class {
	get := []string{"GET"}
	return []Class{
		{
			Name: "sso",
			Patterns: []string{
				cAll + "/login/sso/redirect",
				"^/_synapse/client/pick_idp$",
				"^/_synapse/client/pick_username",
				"^/_synapse/client/new_user_consent$",
				"^/_synapse/client/sso_register$",
				"^/_synapse/client/oidc/callback$",
				"^/_synapse/client/saml2/authn_response$",
				cAll + "/login/cas/ticket$",
			},
			Duty: DutySSO, Policy: Single, Pools: []string{PoolSSO}, Resource: "client",
		},
		{
			Name:     "sync",
			Patterns: []string{cSync + "/sync$"},
			Methods:  get, Duty: DutyGeneric, Policy: StickyUser,
			Pools: []string{PoolSync}, InitialPools: []string{PoolInitialSync, PoolSync}, Resource: "client",
		},
		{
			Name:     "legacy_sync",
			Patterns: []string{cLegcy + "/events$"},
			Methods:  get, Duty: DutyGeneric, Policy: StickyUser,
			Pools: []string{PoolSync}, Resource: "client",
		},
		{
			Name: "legacy_initial_sync",
			Patterns: []string{
				cLegcy + "/initialSync$",
				cLegcy + "/rooms/[^/]+/initialSync$",
			},
			Methods: get, Duty: DutyGeneric, Policy: StickyUser,
			Pools: []string{PoolInitialSync, PoolSync}, Resource: "client",
		},
		{
			// Transactions from one server are processed in order, so they
			// go to one worker.
			Name:     "federation_inbound",
			Patterns: []string{"^/_matrix/federation/v1/send/"},
			Methods:  []string{"PUT"}, Duty: DutyGeneric, Policy: StickyOrigin,
			Pools: []string{PoolFederationInbound, PoolFederation}, Body: LimitFederation, Resource: "federation",
		},
		{
			Name: "federation_read",
			Patterns: []string{
				"^/_matrix/federation/v1/event/",
				"^/_matrix/federation/v1/state/",
				"^/_matrix/federation/v1/state_ids/",
				"^/_matrix/federation/v1/backfill/",
				"^/_matrix/federation/v1/get_missing_events/",
				"^/_matrix/federation/v1/publicRooms",
				"^/_matrix/federation/v1/query/",
				"^/_matrix/federation/v1/make_join/",
				"^/_matrix/federation/v1/make_leave/",
				"^/_matrix/federation/(v1|v2)/send_join/",
				"^/_matrix/federation/(v1|v2)/send_leave/",
				"^/_matrix/federation/(v1|v2)/invite/",
				"^/_matrix/federation/v1/event_auth/",
				"^/_matrix/federation/v1/timestamp_to_event/",
				"^/_matrix/federation/v1/exchange_third_party_invite/",
				"^/_matrix/federation/v1/user/devices/",
				"^/_matrix/key/v2/query",
				"^/_matrix/federation/v1/hierarchy/",
				// Not in the v1.83 list (main there), but they only read
				// the database or send through the room's persister.
				"^/_matrix/federation/v1/openid/userinfo$",
				"^/_matrix/federation/v1/3pid/onbind$",
				// Listed by Synapse's workers document after v1.83.
				"^/_matrix/federation/v1/version$",
			},
			Duty: DutyGeneric, Policy: RoundRobin, Pools: []string{PoolFederation},
			Body: LimitFederation, Resource: "federation",
		},
		{
			// Our signing keys. Not in the v1.83 workers document (so main
			// there), but Synapse's generic workers serve them on any
			// listener with the keys or federation resource, and the answer
			// depends only on the shared config.
			Name:     "key_server",
			Patterns: []string{"^/_matrix/key/v2/server(/|$)"},
			Methods:  get, Duty: DutyGeneric, Policy: RoundRobin, Pools: []string{PoolFederation},
			Body: LimitFederation, Resource: "keys",
		},
		{
			// Any worker reads push rules; changes go to the push_rules
			// stream writer (Synapse sent them to main before the stream
			// got a configurable writer).
			Name:     "push_rules",
			Patterns: []string{cAll + "/pushrules/"},
			Methods:  get, Else: "push_rules_write", Duty: DutyGeneric, Policy: RoundRobin,
			Pools: []string{PoolClient}, Resource: "client",
		},
		{
			// Only reached through push_rules' Else (same paths).
			Name:     "push_rules_write",
			Patterns: []string{cAll + "/pushrules/"},
			Methods:  []string{"PUT", "DELETE"}, Duty: DutyStreamWriter, Stream: config.StreamPushRules,
			Policy: ToStreamWriter, Pools: []string{PoolClient}, Resource: "client",
		},
		{
			Name:     "to_device",
			Patterns: []string{cR0 + "/sendToDevice/"},
			Methods:  []string{"PUT"}, Duty: DutyStreamWriter, Stream: config.StreamToDevice,
			Policy: ToStreamWriter, Pools: []string{PoolClient}, Resource: "client",
		},
		{
			Name:     "presence",
			Patterns: []string{cAll + "/presence/"},
			Duty:     DutyStreamWriter, Stream: config.StreamPresence,
			Policy: ToStreamWriter, Pools: []string{PoolClient}, Resource: "client",
		},
		{
			Name: "encryption",
			Patterns: []string{
				cR0 + "/keys/query$",
				cR0 + "/keys/changes$",
				cR0 + "/keys/claim$",
				cR0 + "/room_keys/",
				cR0 + "/keys/upload/",
			},
			Duty: DutyGeneric, Policy: RoundRobin, Pools: []string{PoolEncryption, PoolClient}, Resource: "client",
		},
		{
			Name: "registration",
			Patterns: []string{
				cAll + "/login$",
				cR0 + "/register$",
				cR0 + "/register/available$",
				"^/_matrix/client/v1/register/m.login.registration_token/validity$",
				cR0 + "/password_policy$",
				// Not in the v1.83 lists, but Synapse's workers serve it
				// with the other login servlets; it only touches the
				// shared database, so any generic worker can.
				"^/_matrix/client/(v1|v3)/refresh$",
			},
			Duty: DutyGeneric, Policy: RoundRobin, Pools: []string{PoolRegistration, PoolClient}, Resource: "client",
		},
		{
			Name:     "user_directory",
			Patterns: []string{cR0 + "/user_directory/search$"},
			Duty:     DutyUserDirectory, Policy: RoundRobin,
			Pools: []string{PoolUserDirectory, PoolClient}, Resource: "client",
		},
		{
			// Static and cheap; every process with a client listener
			// answers it, so clients can probe any of them.
			Name:     "versions",
			Patterns: []string{"^/_matrix/client/versions$"},
			Duty:     DutyAny, Policy: RoundRobin, Pools: []string{PoolClient}, Resource: "client",
		},
		{
			// Before the stream-writer classes below: their greedy
			// rooms/.*/X patterns would otherwise claim sends whose event
			// type or transaction id happens to be "typing" or "receipt".
			Name: "event_send",
			Patterns: []string{
				cAll + "/rooms/.*/redact",
				// Not in the v1.83 workers document (main only there), but an
				// upgrade only sends events, which any event creator can.
				cAll + "/rooms/.*/upgrade$",
				cAll + "/rooms/.*/send",
				cAll + "/rooms/.*/state/",
				cAll + "/rooms/.*/(join|invite|leave|ban|unban|kick)$",
				cAll + "/join/",
				cAll + "/knock/",
				cAll + "/profile/",
			},
			Duty: DutyGeneric, Policy: ByRoom, Pools: []string{PoolEvents, PoolClient}, Resource: "client",
		},
		{
			Name:     "typing",
			Patterns: []string{cAll + "/rooms/.*/typing"},
			Duty:     DutyStreamWriter, Stream: config.StreamTyping,
			Policy: ToStreamWriter, Pools: []string{PoolClient}, Resource: "client",
		},
		{
			Name: "receipts",
			Patterns: []string{
				cR0 + "/rooms/.*/receipt",
				cR0 + "/rooms/.*/read_markers",
			},
			Duty: DutyStreamWriter, Stream: config.StreamReceipts,
			Policy: ToStreamWriter, Pools: []string{PoolClient}, Resource: "client",
		},
		{
			Name: "account_data",
			Patterns: []string{
				cR0 + "/.*/tags",
				cR0 + "/.*/account_data",
			},
			Duty: DutyStreamWriter, Stream: config.StreamAccountData,
			Policy: ToStreamWriter, Pools: []string{PoolClient}, Resource: "client",
		},
		{
			// Synapse requires one instance per room for pagination.
			Name:     "pagination",
			Patterns: []string{cAll + "/rooms/.*/messages$"},
			Duty:     DutyGeneric, Policy: ByRoom, Pools: []string{PoolPagination, PoolClient}, Resource: "client",
		},
		{
			Name: "client_read",
			Patterns: []string{
				cAll + "/createRoom$",
				cAll + "/publicRooms$",
				cAll + "/rooms/.*/joined_members$",
				cAll + "/rooms/.*/context/.*$",
				cAll + "/rooms/.*/members$",
				cAll + "/rooms/.*/state$",
				"^/_matrix/client/v1/rooms/.*/hierarchy$",
				"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
				"^/_matrix/client/v1/rooms/.*/threads$",
				"^/_matrix/client/unstable/org.matrix.msc2716/rooms/.*/batch_send$",
				"^/_matrix/client/unstable/im.nheko.summary/rooms/.*/summary$",
				// The summary's stable path (spec v1.15) and the MSC's later
				// unstable one, after the v1.83 list: the same read.
				"^/_matrix/client/v1/room_summary/",
				"^/_matrix/client/unstable/im.nheko.summary/summary/",
				cR0 + "/account/3pid$",
				cR0 + "/account/whoami$",
				cR0 + "/devices$",
				cAll + "/voip/turnServer$",
				cAll + "/rooms/.*/event/",
				cAll + "/joined_rooms$",
				"^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
				"^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
				cAll + "/search$",
				cR0 + "/user/.*/filter(/|$)",
				cAll + "/directory/room/.*$",
				cR0 + "/capabilities$",
			},
			Duty: DutyGeneric, Policy: RoundRobin, Pools: []string{PoolClient}, Resource: "client",
		},
		{
			// The workers document routes all of /_matrix/media/; the
			// authenticated media paths of later spec versions are the
			// same endpoints under new prefixes.
			Name: "media",
			Patterns: []string{
				"^/_matrix/media/",
				"^/_matrix/client/v1/media/",
				"^/_matrix/federation/v1/media/",
			},
			Duty: DutyMedia, Policy: RoundRobin, Pools: []string{PoolMedia}, Body: LimitMedia, Resource: "media",
		},
		{
			Name: "admin_media",
			Patterns: []string{
				"^/_synapse/admin/v1/purge_media_cache$",
				"^/_synapse/admin/v1/room/.*/media.*$",
				"^/_synapse/admin/v1/user/.*/media.*$",
				"^/_synapse/admin/v1/media/.*$",
				"^/_synapse/admin/v1/quarantine_media/.*$",
				"^/_synapse/admin/v1/users/.*/media$",
			},
			Duty: DutyMedia, Policy: RoundRobin, Pools: []string{PoolMedia}, Resource: "client",
		},
		{
			// Everything else under the public Matrix prefixes. Not
			// /_synapse/replication: that is never routed.
			Name: MainOnly,
			Patterns: []string{
				"^/_matrix/",
				"^/_synapse/admin/",
				"^/_synapse/client/",
				`^/\.well-known/matrix/`,
			},
			Duty: DutyMain, Policy: Single, Resource: "client",
		},
	}
}

// table is built once: a worker checks every request against it and the
// regexes are compiled here, not per request. It is never written after
// init, so sharing it is safe; a constructor returning fresh copies would
// only let consumers drift apart.
var table = mustCompile(spec())

func mustCompile(classes []Class) []*Class {
	out := make([]*Class, len(classes))
	for i := range classes {
		c := &classes[i]
		for _, p := range c.Patterns {
			c.filters = append(c.filters, newLiteralFilter(p))
		}
		if c.Body == "" {
			c.Body = LimitJSON
		}
		out[i] = c
	}
	return out
}

// Classes returns the table in match order.
func Classes() []*Class { return slices.Clone(table) }

// ByName returns the class called name.
func ByName(name string) (*Class, bool) {
	for _, c := range table {
		if c.Name == name {
			return c, true
		}
	}
	return nil, false
}

// txnPUTs are the PUT paths ending in a transaction id, which the server
// deduplicates: sending one twice stores it once.
var txnPUTs = regexp.MustCompile(cAll + `/rooms/[^/]+/(send|redact)/[^/]+/[^/]+$|` +
	cR0 + `/sendToDevice/[^/]+/[^/]+$|^/_matrix/federation/v1/send/[^/]+$`)

// Replayable reports whether sending a request twice is harmless: reads,
// and PUTs carrying a transaction id. Other PUTs and DELETEs are not (an
// alias created or a device deleted by the first attempt fails the
// second), nor is any POST.
func Replayable(method, path string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS":
		return true
	case "PUT":
		return txnPUTs.MatchString(path)
	}
	return false
}

// Classify finds the class of a request: the first class whose patterns
// match path. ok is false when the path matched but the class does not take
// method (answer 405, the class is returned for its Allow list), and when
// nothing matched (nil: not a path the fleet serves; answer 404).
func Classify(method, path string) (*Class, bool) {
	for _, c := range table {
		if !c.Match(path) {
			continue
		}
		if c.AllowsMethod(method) {
			return c, true
		}
		if c.Else != "" {
			if e, ok := ByName(c.Else); ok {
				return e, true
			}
		}
		return c, false
	}
	return nil, false
}

// Allowed reports whether a process of role may answer method+path on a
// client, federation or media listener. Paths the table does not know
// (replication, metrics, /health) are left to the listener's resources,
// and a method the table rejects is left to the endpoint's own 405; what
// is refused is a path another duty owns, which must be 404 M_UNRECOGNIZED
// rather than a wrong answer from a process that does not hold its state.
func Allowed(role, method, path string) bool {
	if path == "/health" {
		return true
	}
	c, _ := Classify(method, path)
	if c == nil {
		return true
	}
	return c.ServableBy(role)
}

// PoolNames lists every pool name the table uses, sorted.
func PoolNames() []string {
	var out []string
	for _, c := range table {
		for _, p := range append(slices.Clone(c.Pools), c.InitialPools...) {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return out
}

// RoomKey returns what ByRoom hashes: the path component after /rooms/
// (or after /join/ or /knock/, whose argument is a room id or alias), else
// the whole path.
func RoomKey(path string) string {
	for _, marker := range []string{"/rooms/", "/join/", "/knock/"} {
		if i := strings.Index(path, marker); i >= 0 {
			rest := path[i+len(marker):]
			if j := strings.IndexByte(rest, '/'); j >= 0 {
				rest = rest[:j]
			}
			if rest != "" {
				return rest
			}
		}
	}
	return path
}

// OriginOf returns the origin parameter of an X-Matrix Authorization
// header, or "" when there is none.
func OriginOf(authorization string) string {
	scheme, params, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "X-Matrix") {
		return ""
	}
	for _, p := range strings.Split(params, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if ok && strings.TrimSpace(k) == "origin" {
			return strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return ""
}

// String describes the class for logs and errors.
func (c *Class) String() string { return fmt.Sprintf("%s (%s, %s)", c.Name, c.Duty, c.Policy) }
