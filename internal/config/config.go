package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MainInstance is the instance name of the main process. Synapse calls it
// "master" internally; both spellings are accepted in configs.
const MainInstance = "main"

// Worker roles, the normalised form of worker_app.
const (
	RoleMain             = "main"
	RoleGenericWorker    = "generic_worker"
	RoleMediaRepository  = "media_repository"
	RolePusher           = "pusher"
	RoleFederationSender = "federation_sender"
	RoleAppservice       = "appservice"
	RoleUserDir          = "user_dir"
	RoleRouter           = "router"
)

// Stream names that take writers in stream_writers.
const (
	StreamEvents      = "events"
	StreamTyping      = "typing"
	StreamToDevice    = "to_device"
	StreamAccountData = "account_data"
	StreamReceipts    = "receipts"
	StreamPresence    = "presence"
	StreamPushRules   = "push_rules"
	StreamDeviceLists = "device_lists"
)

// Config is the whole homeserver configuration, shared by the main process
// and all workers; fields documented as worker keys only matter for workers.
//
// Two Synapse keys are held under other Go names because a helper method of
// the same name exists: listeners (MainListeners, see Listeners) and
// stream_writers (Writers, see StreamWriters).
type Config struct {
	ServerName    string     `yaml:"server_name"`
	PublicBaseURL string     `yaml:"public_baseurl"`
	PIDFile       string     `yaml:"pid_file"`
	MainListeners []Listener `yaml:"listeners"`

	Database       DatabaseConfig `yaml:"database"`
	SigningKeyPath string         `yaml:"signing_key_path"`

	EnableRegistration                    bool   `yaml:"enable_registration"`
	EnableRegistrationWithoutVerification bool   `yaml:"enable_registration_without_verification"`
	RegistrationSharedSecret              string `yaml:"registration_shared_secret"`
	RegistrationSharedSecretPath          string `yaml:"registration_shared_secret_path"`
	// BcryptRounds is the bcrypt cost of password hashes (Synapse's key;
	// default 12). Tests lower it to keep registration cheap.
	BcryptRounds int `yaml:"bcrypt_rounds"`
	// RegistrationRequiresToken adds the m.login.registration_token stage
	// to every registration flow (Synapse's key; tokens come from the
	// admin API). PasswordConfig is password_config (passwords.go).
	RegistrationRequiresToken bool           `yaml:"registration_requires_token"`
	PasswordConfig            PasswordConfig `yaml:"password_config"`

	// TLS certificate and key (PEM) of every listener with tls: true, as
	// in Synapse.
	TLSCertificatePath string `yaml:"tls_certificate_path"`
	TLSPrivateKeyPath  string `yaml:"tls_private_key_path"`
	// Session and access token lifetimes (Synapse's keys and defaults:
	// refreshable access tokens last 5m, everything else is unlimited
	// unless set). See accounts.Settings.
	SessionLifetime                   Duration `yaml:"session_lifetime"`
	RefreshableAccessTokenLifetime    Duration `yaml:"refreshable_access_token_lifetime"`
	RefreshTokenLifetime              Duration `yaml:"refresh_token_lifetime"`
	NonrefreshableAccessTokenLifetime Duration `yaml:"nonrefreshable_access_token_lifetime"`

	MaxUploadSize  ByteSize `yaml:"max_upload_size"`
	MediaStorePath string   `yaml:"media_store_path"`
	// Media repository keys (Synapse's); defaults and checks in media.go.
	DynamicThumbnails        bool            `yaml:"dynamic_thumbnails"`
	ThumbnailSizes           []ThumbnailSize `yaml:"thumbnail_sizes"`
	MaxImagePixels           ByteSize        `yaml:"max_image_pixels"`
	EnableAuthenticatedMedia *bool           `yaml:"enable_authenticated_media"`
	MaxPendingMediaUploads   *int            `yaml:"max_pending_media_uploads"`
	URLPreviewEnabled        bool            `yaml:"url_preview_enabled"`
	URLPreviewIPRangeBlock   StringList      `yaml:"url_preview_ip_range_blacklist"`
	URLPreviewIPRangeAllow   StringList      `yaml:"url_preview_ip_range_whitelist"`
	URLPreviewURLBlock       []URLPattern    `yaml:"url_preview_url_blacklist"`
	MaxSpiderSize            ByteSize        `yaml:"max_spider_size"`
	// Remote media cache keys (Synapse's); see media_remote.go.
	MediaRetention            MediaRetention `yaml:"media_retention"`
	PreventMediaDownloadsFrom StringList     `yaml:"prevent_media_downloads_from"`

	// Rate limits (ratelimits.go: defaults, validation, which are enforced).
	RCMessage                   RateLimit            `yaml:"rc_message"`
	RCRegistration              RateLimit            `yaml:"rc_registration"`
	RCLogin                     LoginRateLimits      `yaml:"rc_login"`
	RCRegistrationTokenValidity RateLimit            `yaml:"rc_registration_token_validity"`
	RCJoins                     JoinsRateLimits      `yaml:"rc_joins"`
	RCJoinsPerRoom              RateLimit            `yaml:"rc_joins_per_room"`
	RCInvites                   InvitesRateLimits    `yaml:"rc_invites"`
	RCThirdPartyInvite          RateLimit            `yaml:"rc_third_party_invite"`
	RCAdminRedaction            OptionalRateLimit    `yaml:"rc_admin_redaction"`
	RCRoomCreation              RateLimit            `yaml:"rc_room_creation"`
	RC3PIDValidation            RateLimit            `yaml:"rc_3pid_validation"`
	RCFederation                FederationRateLimits `yaml:"rc_federation"`
	RCPresence                  PresenceRateLimits   `yaml:"rc_presence"`
	RCDelayedEventMgmt          RateLimit            `yaml:"rc_delayed_event_mgmt"`
	RCReports                   RateLimit            `yaml:"rc_reports"`
	RCMediaCreate               RateLimit            `yaml:"rc_media_create"`
	RCUserDirectory             RateLimit            `yaml:"rc_user_directory"`
	RCKeyRequests               RateLimit            `yaml:"rc_key_requests"`

	// HTTPLimits bounds what one connection may hold (httplimits.go);
	// Ganglion's own section, Synapse has no equivalent.
	HTTPLimits HTTPLimits `yaml:"http_limits"`
	// OpenTelemetry is Ganglion's tracing section (opentelemetry.go).
	OpenTelemetry OpenTelemetry `yaml:"opentelemetry"`

	LogConfig string         `yaml:"log_config"`
	Presence  PresenceConfig `yaml:"presence"`
	Push      PushConfig     `yaml:"push"`
	Email     EmailConfig    `yaml:"email"`
	// Federation is Synapse's `federation:` section (the sender's backoff).
	Federation FederationSection `yaml:"federation"`

	UserDirectory UserDirectoryConfig `yaml:"user_directory"`

	// TURN (VoIP) keys, Synapse's (turn.go).
	TURNURIs             StringList `yaml:"turn_uris"`
	TURNSharedSecret     string     `yaml:"turn_shared_secret"`
	TURNSharedSecretPath string     `yaml:"turn_shared_secret_path"`
	TURNUsername         string     `yaml:"turn_username"`
	TURNPassword         string     `yaml:"turn_password"`
	TURNUserLifetime     Duration   `yaml:"turn_user_lifetime"`
	TURNAllowGuests      bool       `yaml:"turn_allow_guests"`
	// ServerNotices is Synapse's server_notices section (notices.go).
	ServerNotices *ServerNoticesConfig `yaml:"server_notices"`

	FormSecret                     string           `yaml:"form_secret"`
	MacaroonSecretKey              string           `yaml:"macaroon_secret_key"`
	SuppressKeyServerWarning       bool             `yaml:"suppress_key_server_warning"`
	TrustedKeyServers              []map[string]any `yaml:"trusted_key_servers"` // raw; nil = unset
	ReportStats                    bool             `yaml:"report_stats"`
	DefaultRoomVersion             string           `yaml:"default_room_version"`
	AllowPublicRoomsWithoutAuth    bool             `yaml:"allow_public_rooms_without_auth"`
	AllowPublicRoomsOverFederation bool             `yaml:"allow_public_rooms_over_federation"`
	// AllowProfileLookupOverFederation: unset means true, as in Synapse.
	AllowProfileLookupOverFederation *bool `yaml:"allow_profile_lookup_over_federation"`
	// AllowDeviceNameLookupOverFederation lets other servers see device
	// display names (Synapse's key, default false).
	AllowDeviceNameLookupOverFederation bool             `yaml:"allow_device_name_lookup_over_federation"`
	RoomListPublicationRules            []map[string]any `yaml:"room_list_publication_rules"` // raw
	// EnableMetrics is Synapse's key, but unset means on here: every
	// process serves its metrics on a `metrics` listener. false leaves the
	// series registered but stops measuring requests and transactions,
	// which is how the benchmark prices the instrumentation.
	EnableMetrics *bool `yaml:"enable_metrics"`

	// Server keys (serverkeys.go): how long our /_matrix/key/v2/server
	// answer is valid, and the keys we signed with before. The notaries,
	// trusted_key_servers, are above (raw; KeyServers parses them).
	KeyRefreshInterval Duration                 `yaml:"key_refresh_interval"`
	OldSigningKeys     map[string]OldSigningKey `yaml:"old_signing_keys"`

	// Per-worker keys.
	WorkerApp       string     `yaml:"worker_app"` // as written; see WorkerRole
	WorkerName      string     `yaml:"worker_name"`
	WorkerListeners []Listener `yaml:"worker_listeners"`
	WorkerLogConfig string     `yaml:"worker_log_config"`
	WorkerPIDFile   string     `yaml:"worker_pid_file"`

	// Legacy way for a worker to find the main process; mapped into
	// InstanceMap["main"] when that is absent.
	WorkerReplicationHost     string `yaml:"worker_replication_host"`
	WorkerReplicationHTTPPort int    `yaml:"worker_replication_http_port"`
	WorkerReplicationHTTPTLS  bool   `yaml:"worker_replication_http_tls"`

	// Shared worker keys.
	InstanceMap                 map[string]InstanceLocation `yaml:"instance_map"`
	Writers                     StreamWritersConfig         `yaml:"stream_writers"`
	WorkerReplicationSecret     string                      `yaml:"worker_replication_secret"`
	WorkerReplicationSecretPath string                      `yaml:"worker_replication_secret_path"`
	Redis                       RedisConfig                 `yaml:"redis"`

	// Duties. Empty instance names mean the main process. A nil list means
	// unset (fall back to the legacy boolean); an empty list means nobody.
	RunBackgroundTasksOn               string     `yaml:"run_background_tasks_on"`
	FederationSenderInstances          StringList `yaml:"federation_sender_instances"`
	SendFederation                     *bool      `yaml:"send_federation"` // legacy
	PusherInstances                    StringList `yaml:"pusher_instances"`
	StartPushers                       *bool      `yaml:"start_pushers"` // legacy
	EnableMediaRepo                    *bool      `yaml:"enable_media_repo"`
	MediaInstanceRunningBackgroundJobs string     `yaml:"media_instance_running_background_jobs"`
	UpdateUserDirectoryFromWorker      string     `yaml:"update_user_directory_from_worker"`
	UpdateUserDirectory                *bool      `yaml:"update_user_directory"` // legacy
	NotifyAppservicesFromWorker        string     `yaml:"notify_appservices_from_worker"`
	NotifyAppservices                  *bool      `yaml:"notify_appservices"` // legacy
	// AppServiceConfigFiles are the application services' registration
	// files (internal/appservice reads and checks them at start).
	AppServiceConfigFiles          []string   `yaml:"app_service_config_files"`
	OutboundFederationRestrictedTo StringList `yaml:"outbound_federation_restricted_to"`
	// ExperimentalFeatures: experimental.go.
	ExperimentalFeatures ExperimentalFeatures `yaml:"experimental_features"`

	// Federation client and request authentication (federation.go).
	FederationDomainWhitelist    StringList `yaml:"federation_domain_whitelist"` // nil: every server
	FederationVerifyCertificates *bool      `yaml:"federation_verify_certificates"`
	FederationCustomCAList       StringList `yaml:"federation_custom_ca_list"`
	FederationIPRangeBlacklist   StringList `yaml:"federation_ip_range_blacklist"` // legacy; nil: unset
	IPRangeBlacklist             StringList `yaml:"ip_range_blacklist"`            // nil: Synapse's default list
	IPRangeWhitelist             StringList `yaml:"ip_range_whitelist"`

	// Filled by Load, never read from YAML.

	// UnknownKeys lists, sorted, the top-level keys Ganglion ignored.
	UnknownKeys []string `yaml:"-"`
	// NotBuiltKeys lists, sorted, the top-level keys the files set for
	// features Ganglion does not have yet (see NotBuilt); they are
	// ignored, and the process warns about each at start.
	NotBuiltKeys []string `yaml:"-"`
	// ConfigDir is the absolute directory of the first config file, against
	// which relative paths were resolved.
	ConfigDir string `yaml:"-"`
	// Logging is the effective log config of this process (log_config for
	// main, worker_log_config for workers), or the defaults.
	Logging LogSettings `yaml:"-"`

	// Contents of the *_path secret files, read by Load. Kept apart from the
	// inline fields so Validate can still tell that both were set.
	replicationSecretFromFile  string
	registrationSecretFromFile string
	turnSecretFromFile         string
	tlsCert                    *tls.Certificate
	federationCAs              *x509.CertPool
}

// Listener is one entry of listeners or worker_listeners.
type Listener struct {
	Port int `yaml:"port"`
	// BindAddresses also receives the legacy bind_address key. Empty after
	// defaults means it was never set; ApplyDefaults fills Synapse's default
	// of every interface ("::" and "0.0.0.0").
	BindAddresses []string `yaml:"bind_addresses"`
	Type          string   `yaml:"type"`
	TLS           bool     `yaml:"tls"`
	XForwarded    bool     `yaml:"x_forwarded"`
	// XForwardedTrustedProxies (Ganglion's key; Synapse has none) lists the
	// peers, as IP addresses or CIDR ranges, whose X-Forwarded-For an
	// x_forwarded listener believes. Unset means loopback only, where the
	// router or nginx of a one-host fleet connects from; anyone else
	// reaching the port directly cannot pick the address that rate limits
	// count them under.
	XForwardedTrustedProxies []string           `yaml:"x_forwarded_trusted_proxies"`
	Resources                []ListenerResource `yaml:"resources"`
}

// ListenerResource is one entry of a listener's resources.
type ListenerResource struct {
	Names    []string `yaml:"names"`
	Compress bool     `yaml:"compress"`
}

// UnmarshalYAML folds the legacy single bind_address into BindAddresses, as
// Synapse does (it appends it).
func (l *Listener) UnmarshalYAML(n *yaml.Node) error {
	type plain Listener
	var raw struct {
		plain       `yaml:",inline"`
		BindAddress string `yaml:"bind_address"`
	}
	raw.plain = plain(*l)
	if err := n.Decode(&raw); err != nil {
		return err
	}
	*l = Listener(raw.plain)
	if raw.BindAddress != "" {
		l.BindAddresses = append(l.BindAddresses, raw.BindAddress)
	}
	return nil
}

// HasResource reports whether any resource entry names name.
func (l Listener) HasResource(name string) bool {
	for _, r := range l.Resources {
		if slices.Contains(r.Names, name) {
			return true
		}
	}
	return false
}

// Addresses returns the host:port pairs to listen on.
func (l Listener) Addresses() []string {
	out := make([]string, 0, len(l.BindAddresses))
	for _, a := range l.BindAddresses {
		out = append(out, net.JoinHostPort(a, strconv.Itoa(l.Port)))
	}
	return out
}

// InstanceLocation says where an instance's replication listener is: TCP
// (Host, Port, TLS) or a Unix socket (Path).
type InstanceLocation struct {
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	TLS  bool   `yaml:"tls"`
	Path string `yaml:"path"`
}

// Network returns the arguments for net.Dial.
func (l InstanceLocation) Network() (network, address string) {
	if l.Path != "" {
		return "unix", l.Path
	}
	return "tcp", net.JoinHostPort(l.Host, strconv.Itoa(l.Port))
}

// Scheme is the URL scheme to use for HTTP replication requests; Unix
// sockets speak plain HTTP.
func (l InstanceLocation) Scheme() string {
	if l.TLS && l.Path == "" {
		return "https"
	}
	return "http"
}

// StreamWritersConfig is stream_writers. A nil list means unset (the main
// process writes); an explicitly empty list is kept so Validate can reject
// it.
type StreamWritersConfig struct {
	Events      StringList `yaml:"events"`
	Typing      StringList `yaml:"typing"`
	ToDevice    StringList `yaml:"to_device"`
	AccountData StringList `yaml:"account_data"`
	Receipts    StringList `yaml:"receipts"`
	Presence    StringList `yaml:"presence"`
	PushRules   StringList `yaml:"push_rules"`
	DeviceLists StringList `yaml:"device_lists"`
	// Unknown catches misspelt or unsupported stream names so Validate can
	// report them instead of silently running them on main.
	Unknown map[string]StringList `yaml:",inline"`
}

// field returns a pointer to the list for a known stream, or nil.
func (w *StreamWritersConfig) field(stream string) *StringList {
	switch stream {
	case StreamEvents:
		return &w.Events
	case StreamTyping:
		return &w.Typing
	case StreamToDevice:
		return &w.ToDevice
	case StreamAccountData:
		return &w.AccountData
	case StreamReceipts:
		return &w.Receipts
	case StreamPresence:
		return &w.Presence
	case StreamPushRules:
		return &w.PushRules
	case StreamDeviceLists:
		return &w.DeviceLists
	}
	return nil
}

// writerStreams lists the configurable streams in a fixed order, so
// validation output is stable.
func writerStreams() []string {
	return []string{StreamEvents, StreamTyping, StreamToDevice, StreamAccountData,
		StreamReceipts, StreamPresence, StreamPushRules, StreamDeviceLists}
}

// RedisConfig is the redis section.
type RedisConfig struct {
	Enabled      bool   `yaml:"enabled"`
	Host         string `yaml:"host"`
	Port         int    `yaml:"port"`
	Path         string `yaml:"path"` // Unix socket; wins over Host/Port
	DBID         int    `yaml:"dbid"`
	Password     string `yaml:"password"`
	PasswordPath string `yaml:"password_path"`
	UseTLS       bool   `yaml:"use_tls"`
	// TLS material, as Synapse names it: the client certificate and key
	// (both or neither), and CAs to verify the server with instead of the
	// system roots.
	CertificateFile string `yaml:"certificate_file"`
	PrivateKeyFile  string `yaml:"private_key_file"`
	CAFile          string `yaml:"ca_file"`
	CAPath          string `yaml:"ca_path"`
	// ChannelPrefix (Ganglion's, Synapse has none) goes before server_name
	// in the pub/sub channel, so fleets sharing one Redis stay apart.
	ChannelPrefix string `yaml:"channel_prefix"`

	passwordFromFile string
}

// EffectivePassword is Password, or the contents of PasswordPath as read by
// Load.
func (r RedisConfig) EffectivePassword() string {
	if r.Password != "" {
		return r.Password
	}
	return r.passwordFromFile
}

// PresenceConfig is the presence section. Synapse's enabled: "untracked"
// (presence on, but users' own activity not tracked) sets both fields.
// PushConfig is Synapse's push section. Enabled false stops push
// evaluation on send (so no notifications, unread counts or pushes).
type PushConfig struct {
	Enabled bool `yaml:"enabled"`
}

type PresenceConfig struct {
	Enabled   bool `yaml:"enabled"`
	Untracked bool `yaml:"-"`
}

// UnmarshalYAML accepts enabled: true|false|"untracked" and leaves the
// default alone when enabled is absent.
func (p *PresenceConfig) UnmarshalYAML(n *yaml.Node) error {
	var raw struct {
		Enabled yaml.Node `yaml:"enabled"`
	}
	if err := n.Decode(&raw); err != nil {
		return err
	}
	if raw.Enabled.Kind == 0 {
		return nil // absent: keep the default
	}
	if raw.Enabled.Kind == yaml.ScalarNode && strings.EqualFold(raw.Enabled.Value, "untracked") {
		p.Enabled, p.Untracked = true, true
		return nil
	}
	var b bool
	if err := raw.Enabled.Decode(&b); err != nil {
		return fmt.Errorf("line %d: presence.enabled: want true, false or \"untracked\"", raw.Enabled.Line)
	}
	p.Enabled, p.Untracked = b, false
	return nil
}

// StringList accepts a single string or a list of strings, as Synapse does
// for stream_writers and instance lists.
type StringList []string

// UnmarshalYAML accepts a scalar or a sequence of scalars. An empty sequence
// yields an empty non-nil list so that "explicitly nobody" survives.
func (s *StringList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*s = StringList{n.Value}
		return nil
	case yaml.SequenceNode:
		out := make(StringList, 0, len(n.Content))
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: want a string or a list of strings", c.Line)
			}
			out = append(out, c.Value)
		}
		*s = out
		return nil
	}
	return fmt.Errorf("line %d: want a string or a list of strings", n.Line)
}

// Default returns a Config holding the static defaults. Load decodes the
// files on top of it, so a key that is absent keeps its default while an
// explicit zero (per_second: 0) is respected.
func Default() *Config {
	c := &Config{
		MaxUploadSize: "50M",
		BcryptRounds:  12,
		// Synapse's default; only clients that ask for a refresh token get
		// expiring access tokens.
		RefreshableAccessTokenLifetime: "5m",
		DefaultRoomVersion:             "10",
		Presence:                       PresenceConfig{Enabled: true},
		UserDirectory:                  UserDirectoryConfig{Enabled: true},
		Push:                           PushConfig{Enabled: true},
		Email:                          defaultEmail(),
		Federation:                     defaultFederationSection(),
		HTTPLimits:                     defaultHTTPLimits(),
		Redis:                          RedisConfig{Host: "localhost", Port: 6379},
		TURNUserLifetime:               defaultTURNUserLifetime,
		TURNAllowGuests:                true,
	}
	defaultRateLimits(c)
	return c
}

// NormalizeWorkerApp maps a worker_app value to its role. It accepts
// "synapse.app.X", "ganglion.app.X" and bare "X"; an empty value and
// "homeserver" mean the main process, and Synapse's historical app names
// that are now generic workers map to RoleGenericWorker.
func NormalizeWorkerApp(app string) (role string, ok bool) {
	name := strings.TrimSpace(app)
	for _, prefix := range []string{"synapse.app.", "ganglion.app."} {
		if rest, found := strings.CutPrefix(name, prefix); found {
			name = rest
			break
		}
	}
	switch name {
	case "", "homeserver", RoleMain:
		return RoleMain, true
	case RoleGenericWorker, "client_reader", "event_creator", "federation_reader",
		"frontend_proxy", "synchrotron":
		return RoleGenericWorker, true
	case RoleMediaRepository, RolePusher, RoleFederationSender, RoleAppservice,
		RoleUserDir, RoleRouter:
		return name, true
	}
	return name, false
}

// WorkerRole is the normalised worker_app; an unknown app is returned as
// its bare name (Validate reports it).
func (c *Config) WorkerRole() string {
	role, _ := NormalizeWorkerApp(c.WorkerApp)
	return role
}

// IsMain reports whether this is the main process.
func (c *Config) IsMain() bool { return c.WorkerRole() == RoleMain }

// InstanceName is "main" for the main process and worker_name otherwise.
func (c *Config) InstanceName() string {
	if c.IsMain() {
		return MainInstance
	}
	return c.WorkerName
}

// Listeners returns this process's listeners: listeners for the main
// process, worker_listeners for a worker (a worker never opens the shared
// file's main listeners).
func (c *Config) Listeners() []Listener {
	if c.IsMain() {
		return c.MainListeners
	}
	return c.WorkerListeners
}

// StreamWriters returns the instances that write stream, in config order
// (the order matters for event sharding). Unset means ["main"].
func (c *Config) StreamWriters(stream string) []string {
	if f := c.Writers.field(stream); f != nil && *f != nil {
		return slices.Clone(*f)
	}
	return []string{MainInstance}
}

// IsStreamWriter reports whether this instance writes stream.
func (c *Config) IsStreamWriter(stream string) bool {
	return slices.Contains(c.StreamWriters(stream), c.InstanceName())
}

// EventsWriterFor returns the event persister that owns roomID.
func (c *Config) EventsWriterFor(roomID string) string {
	return ShardFor(c.StreamWriters(StreamEvents), roomID)
}

// ReplicationSecret is worker_replication_secret, or the contents of
// worker_replication_secret_path as read by Load. Empty means HTTP
// replication is unauthenticated.
func (c *Config) ReplicationSecret() string {
	if c.WorkerReplicationSecret != "" {
		return c.WorkerReplicationSecret
	}
	return c.replicationSecretFromFile
}

// RegistrationSecret is registration_shared_secret or the contents of
// registration_shared_secret_path.
func (c *Config) RegistrationSecret() string {
	if c.RegistrationSharedSecret != "" {
		return c.RegistrationSharedSecret
	}
	return c.registrationSecretFromFile
}

// MaxUploadBytes is max_upload_size in bytes, or 0 if it does not parse
// (Validate reports that).
func (c *Config) MaxUploadBytes() int64 {
	n, err := c.MaxUploadSize.Bytes()
	if err != nil {
		return 0
	}
	return n
}

// RunsBackgroundTasks reports whether this instance runs the periodic
// background jobs (run_background_tasks_on, default main).
func (c *Config) RunsBackgroundTasks() bool {
	return orMain(c.RunBackgroundTasksOn) == c.InstanceName()
}

// FederationSenders lists the instances that send federation traffic,
// sharded by destination with ShardFor.
func (c *Config) FederationSenders() []string {
	return c.dutyInstances(c.FederationSenderInstances, c.SendFederation, RoleFederationSender)
}

// Pushers lists the instances that send push notifications, sharded by
// user ID with ShardFor.
func (c *Config) Pushers() []string {
	return c.dutyInstances(c.PusherInstances, c.StartPushers, RolePusher)
}

// dutyInstances follows Synapse: the modern list wins; otherwise the legacy
// boolean (default true) keeps the duty on main, and false hands it to the
// workers running the legacy app, of which this process only knows itself.
func (c *Config) dutyInstances(list StringList, legacy *bool, legacyRole string) []string {
	if list != nil {
		return slices.Clone(list)
	}
	if legacy == nil || *legacy {
		return []string{MainInstance}
	}
	if c.WorkerRole() == legacyRole {
		return []string{c.InstanceName()}
	}
	return []string{}
}

// NotifiesAppservices reports whether this instance sends traffic to
// application services.
func (c *Config) NotifiesAppservices() bool {
	return c.performsDuty(c.NotifyAppservicesFromWorker, c.NotifyAppservices, RoleAppservice)
}

// UpdatesUserDirectory reports whether this instance maintains the user
// directory.
func (c *Config) UpdatesUserDirectory() bool {
	return c.performsDuty(c.UpdateUserDirectoryFromWorker, c.UpdateUserDirectory, RoleUserDir)
}

func (c *Config) performsDuty(designated string, legacy *bool, legacyRole string) bool {
	modern, legacyHere := c.dutyHere(designated, legacy, legacyRole)
	switch {
	case modern != nil:
		return *modern
	case legacyHere != nil:
		return *legacyHere
	}
	return c.IsMain()
}

// dutyHere evaluates a single-instance duty for this instance under the
// modern option and under the legacy boolean; nil means that option is
// unset. Validate rejects configs where both are set and disagree.
func (c *Config) dutyHere(designated string, legacy *bool, legacyRole string) (modern, legacyHere *bool) {
	if designated != "" {
		v := designated == c.InstanceName()
		modern = &v
	}
	if legacy != nil {
		v := (c.IsMain() && *legacy) || (c.WorkerRole() == legacyRole && !*legacy)
		legacyHere = &v
	}
	return modern, legacyHere
}

// CanLoadMediaRepo reports whether this instance may serve the media
// repository: a media_repository worker always, others unless
// enable_media_repo is false.
func (c *Config) CanLoadMediaRepo() bool {
	return c.WorkerRole() == RoleMediaRepository || c.EnableMediaRepo == nil || *c.EnableMediaRepo
}

// RunsMediaBackgroundJobs reports whether this instance runs media cleanup
// jobs. As in Synapse, leaving media_instance_running_background_jobs unset
// makes every media-serving instance run them.
func (c *Config) RunsMediaBackgroundJobs() bool {
	if !c.CanLoadMediaRepo() {
		return false
	}
	return c.MediaInstanceRunningBackgroundJobs == "" || c.MediaInstanceRunningBackgroundJobs == c.InstanceName()
}

func orMain(name string) string {
	if name == "" {
		return MainInstance
	}
	return name
}

// MetricsEnabled reports whether requests and transactions are measured:
// unless enable_metrics is false.
func (c *Config) MetricsEnabled() bool { return c.EnableMetrics == nil || *c.EnableMetrics }
