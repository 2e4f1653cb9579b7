package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"ganglion/internal/forwarded"
)

// Problem is one thing wrong with a config, located by its key path
// ("stream_writers.typing", "listeners[1].port"), by an environment
// variable name, or by a file name for type errors.
type Problem struct {
	Path    string
	Message string
}

func (p Problem) String() string { return p.Path + ": " + p.Message }

// ValidationError carries every problem found, so an operator fixes them all
// in one pass instead of one per restart.
type ValidationError struct {
	Problems []Problem
}

// Error lists the problems one per line.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// problems accumulates Problems; add is a Printf-style shorthand.
type problems []Problem

func (ps *problems) add(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// knownResources are the listener resource names Ganglion serves.
// KnownResources lists the listener resource names Ganglion accepts.
func KnownResources() []string { return knownResources() }

func knownResources() []string {
	// pprof (Ganglion's) serves Go's /debug/pprof/ profiles: they cost CPU
	// and show memory contents, so only a listener that names it serves
	// them.
	return []string{"client", "federation", "media", "keys", "replication",
		"metrics", "health", "static", "openid", "pprof"}
}

// Validate checks the config and returns a *ValidationError listing every
// problem, or nil. It does no I/O. Defaults must already be applied
// (Load does; hand-built configs call ApplyDefaults).
func (c *Config) Validate() error {
	var ps problems
	c.validateServer(&ps)
	c.validateListeners(&ps, "listeners", c.MainListeners)
	c.validateListeners(&ps, "worker_listeners", c.WorkerListeners)
	c.validateDatabase(&ps)
	c.validateLimits(&ps)
	c.validateLifetimes(&ps)
	c.validateWorker(&ps)
	c.validateInstanceMap(&ps)
	c.validateWriters(&ps)
	c.validateDuties(&ps)
	c.validateFederation(&ps)
	c.validateRedis(&ps)
	c.validateMedia(&ps)
	c.validateEmail(&ps)
	c.validatePasswords(&ps)
	c.validateTURN(&ps)
	c.validateServerNotices(&ps)
	c.validateServerKeys(&ps)
	c.validateFederationSection(&ps)
	if len(ps) == 0 {
		return nil
	}
	return &ValidationError{Problems: ps}
}

func (c *Config) validateServer(ps *problems) {
	if c.ServerName == "" {
		ps.add("server_name", "required")
	} else if err := checkServerName(c.ServerName); err != nil {
		ps.add("server_name", "%v", err)
	}
	if c.PublicBaseURL != "" {
		u, err := url.Parse(c.PublicBaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			ps.add("public_baseurl", "%q is not an http(s) URL", c.PublicBaseURL)
		}
	}
	if c.RegistrationSharedSecret != "" && c.RegistrationSharedSecretPath != "" {
		ps.add("registration_shared_secret_path", "cannot be used together with registration_shared_secret")
	}
	if c.WorkerReplicationSecret != "" && c.WorkerReplicationSecretPath != "" {
		ps.add("worker_replication_secret_path", "cannot be used together with worker_replication_secret")
	}
	// bcrypt's own cost limits.
	if c.BcryptRounds < 4 || c.BcryptRounds > 31 {
		ps.add("bcrypt_rounds", "must be between 4 and 31, got %d", c.BcryptRounds)
	}
	if _, err := c.MaxUploadSize.Bytes(); err != nil {
		ps.add("max_upload_size", "%v", err)
	}
}

func (c *Config) validateListeners(ps *problems, key string, ls []Listener) {
	hasSecret := c.WorkerReplicationSecret != "" || c.WorkerReplicationSecretPath != ""
	for i, l := range ls {
		p := fmt.Sprintf("%s[%d]", key, i)
		if l.Port < 1 || l.Port > 65535 {
			ps.add(p+".port", "must be between 1 and 65535, got %d", l.Port)
		}
		switch l.Type {
		case "http":
		case "":
			ps.add(p+".type", "required; only \"http\" is supported")
		case "metrics":
			ps.add(p+".type", "\"metrics\" is not supported; use type: http with resources: [{names: [metrics]}]")
		default:
			ps.add(p+".type", "%q is not supported; only \"http\" is", l.Type)
		}
		for j, r := range l.Resources {
			for k, name := range r.Names {
				if !slices.Contains(knownResources(), name) {
					ps.add(fmt.Sprintf("%s.resources[%d].names[%d]", p, j, k),
						"unknown resource %q; want one of %s", name, strings.Join(knownResources(), ", "))
				}
			}
		}
		if l.TLS && (c.TLSCertificatePath == "" || c.TLSPrivateKeyPath == "") {
			ps.add(p+".tls", "needs tls_certificate_path and tls_private_key_path")
		}
		if l.XForwardedTrustedProxies != nil {
			if !l.XForwarded {
				ps.add(p+".x_forwarded_trusted_proxies", "has no effect without x_forwarded: true")
			}
			if _, err := forwarded.Parse(l.XForwardedTrustedProxies); err != nil {
				ps.add(p+".x_forwarded_trusted_proxies", "%v", err)
			}
		}
		// Replication endpoints act on behalf of any user; anyone who can
		// reach them unauthenticated owns the server.
		if l.HasResource("replication") && !hasSecret {
			for _, a := range l.BindAddresses {
				if !isLoopback(a) {
					ps.add(p+".bind_addresses",
						"replication resource on non-loopback address %q needs worker_replication_secret", a)
					break
				}
			}
		}
	}
}

// checkServerName accepts the Matrix server name grammar: a DNS name, an
// IPv4 address or a bracketed IPv6 address, optionally followed by :port.
func checkServerName(name string) error {
	bad := fmt.Errorf("%q is not a valid server name (hostname[:port])", name)
	host, port := name, ""
	if strings.HasPrefix(name, "[") {
		end := strings.Index(name, "]")
		if end < 0 {
			return bad
		}
		host, port = name[1:end], strings.TrimPrefix(name[end+1:], ":")
		if net.ParseIP(host) == nil || !strings.Contains(host, ":") ||
			(name[end+1:] != "" && !strings.HasPrefix(name[end+1:], ":")) {
			return bad
		}
	} else {
		if i := strings.LastIndex(name, ":"); i >= 0 {
			host, port = name[:i], name[i+1:]
		}
		if host == "" || len(host) > 255 || strings.Trim(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != "" {
			return bad
		}
	}
	if port != "" || strings.HasSuffix(name, ":") {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return bad
		}
	}
	return nil
}

func isLoopback(addr string) bool {
	if strings.EqualFold(addr, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(addr, "[]"))
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateDatabase(ps *problems) {
	d := c.Database
	switch d.Name {
	case DatabaseSQLite:
		if d.Args.Database == "" {
			ps.add("database.args.database", "required for sqlite3")
		}
	case DatabasePostgres:
		if d.Args.Port < 0 || d.Args.Port > 65535 {
			ps.add("database.args.port", "must be between 1 and 65535, got %d", d.Args.Port)
		}
		if d.Args.CPMin < 0 {
			ps.add("database.args.cp_min", "must not be negative")
		}
		if d.Args.CPMax < 1 {
			ps.add("database.args.cp_max", "must be at least 1")
		} else if d.Args.CPMin > d.Args.CPMax {
			ps.add("database.args.cp_min", "%d is more than cp_max %d", d.Args.CPMin, d.Args.CPMax)
		}
		switch d.Args.SSLMode {
		case "", "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
		default:
			ps.add("database.args.sslmode", "unknown mode %q", d.Args.SSLMode)
		}
	default:
		ps.add("database.name", "must be %s or %s, got %q", DatabaseSQLite, DatabasePostgres, d.Name)
	}
	// SQLite allows one writer process; a second process would corrupt
	// positions or hit "database is locked". The router never opens the
	// database.
	if d.Name == DatabaseSQLite && c.isFleet() && c.WorkerRole() != RoleRouter {
		ps.add("database.name", "worker roles need PostgreSQL (database.name: psycopg2)")
	}
}

// isFleet reports whether this config describes more than one process:
// a worker, or a main process whose streams are written elsewhere.
func (c *Config) isFleet() bool {
	if !c.IsMain() {
		return true
	}
	for _, s := range writerStreams() {
		for _, w := range c.StreamWriters(s) {
			if w != MainInstance {
				return true
			}
		}
	}
	return false
}

func (c *Config) validateLimits(ps *problems) {
	c.validateRateLimits(ps)
	c.validateHTTPLimits(ps)
	c.validateOpenTelemetry(ps)
}

func (c *Config) validateWorker(ps *problems) {
	if _, ok := NormalizeWorkerApp(c.WorkerApp); !ok {
		ps.add("worker_app", "unknown worker app %q; want generic_worker, media_repository, pusher, "+
			"federation_sender, appservice, user_dir or router (optionally prefixed synapse.app. or ganglion.app.)", c.WorkerApp)
		return
	}
	if c.WorkerReplicationHost != "" && c.WorkerReplicationHTTPPort == 0 {
		ps.add("worker_replication_http_port", "required when worker_replication_host is set")
	}
	if c.WorkerReplicationHTTPPort != 0 && c.WorkerReplicationHost == "" {
		ps.add("worker_replication_host", "required when worker_replication_http_port is set")
	}
	if c.IsMain() {
		return
	}
	switch c.WorkerName {
	case "":
		ps.add("worker_name", "required for worker %s", c.WorkerRole())
	case MainInstance, "master":
		ps.add("worker_name", "%q is reserved for the main process", c.WorkerName)
	}
	if _, ok := c.InstanceMap[MainInstance]; !ok {
		ps.add("instance_map.main", "required for workers, to reach the main process "+
			"(or set the legacy worker_replication_host and worker_replication_http_port)")
	}
}

func (c *Config) validateInstanceMap(ps *problems) {
	if _, m := c.InstanceMap["master"]; m {
		if _, ok := c.InstanceMap[MainInstance]; ok {
			ps.add("instance_map.master", "duplicates instance_map.main (master is an alias of main)")
		}
	}
	for _, name := range sortedKeys(c.InstanceMap) {
		loc := c.InstanceMap[name]
		p := "instance_map." + name
		switch {
		case loc.Path != "" && (loc.Host != "" || loc.Port != 0):
			ps.add(p, "set either path or host and port, not both")
		case loc.Path != "":
		default:
			if loc.Host == "" {
				ps.add(p+".host", "required")
			}
			if loc.Port < 1 || loc.Port > 65535 {
				ps.add(p+".port", "must be between 1 and 65535, got %d", loc.Port)
			}
		}
	}
}

func (c *Config) validateWriters(ps *problems) {
	for _, s := range writerStreams() {
		key := "stream_writers." + s
		writers := c.StreamWriters(s)
		switch s {
		case StreamReceipts:
			// Synapse shards receipts by room over several writers;
			// Ganglion has one receipts writer and would silently send
			// every receipt to the first.
			if len(writers) > 1 {
				ps.add(key, "only one writer supported (Ganglion does not shard receipts), got %d", len(writers))
			} else if len(writers) == 0 {
				ps.add(key, "exactly one writer required, got 0")
			}
		case StreamEvents, StreamDeviceLists:
			if len(writers) == 0 {
				ps.add(key, "at least one writer required")
			}
		default:
			if len(writers) > 1 {
				ps.add(key, "only one writer allowed, got %d", len(writers))
			} else if len(writers) == 0 {
				ps.add(key, "exactly one writer required, got 0")
			}
		}
		seen := map[string]bool{}
		for _, w := range writers {
			if seen[w] {
				// A repeated persister would silently take a double share of
				// rooms; almost certainly a typo.
				ps.add(key, "%q listed more than once", w)
			}
			seen[w] = true
		}
		// Other processes forward writes to these instances over HTTP
		// replication, so they must be reachable. device_lists is exempt,
		// as in Synapse.
		if s == StreamDeviceLists {
			continue
		}
		for _, w := range writers {
			if w == MainInstance {
				continue
			}
			if _, ok := c.InstanceMap[w]; !ok {
				ps.add(key, "writer %q is not in instance_map", w)
			}
		}
	}
	for _, name := range sortedKeys(c.Writers.Unknown) {
		ps.add("stream_writers."+name, "unknown stream; want one of %s", strings.Join(writerStreams(), ", "))
	}
}

func (c *Config) validateDuties(ps *problems) {
	c.validateLegacyList(ps, "send_federation", c.SendFederation, RoleFederationSender, c.FederationSenderInstances)
	c.validateLegacyList(ps, "start_pushers", c.StartPushers, RolePusher, c.PusherInstances)
	c.validateLegacyDuty(ps, "notify_appservices", c.NotifyAppservices, RoleAppservice,
		"notify_appservices_from_worker", c.NotifyAppservicesFromWorker)
	c.validateLegacyDuty(ps, "update_user_directory", c.UpdateUserDirectory, RoleUserDir,
		"update_user_directory_from_worker", c.UpdateUserDirectoryFromWorker)

	if len(c.OutboundFederationRestrictedTo) > 0 {
		if c.WorkerReplicationSecret == "" && c.WorkerReplicationSecretPath == "" {
			ps.add("outbound_federation_restricted_to", "needs worker_replication_secret")
		}
		for _, name := range c.OutboundFederationRestrictedTo {
			if _, ok := c.InstanceMap[name]; !ok {
				ps.add("outbound_federation_restricted_to", "instance %q is not in instance_map", name)
			}
		}
	}
}

// validateLegacyList: a legacy pusher or federation_sender app with no
// modern instance list only takes over if main was told to stop.
func (c *Config) validateLegacyList(ps *problems, legacyKey string, legacy *bool, legacyRole string, list StringList) {
	if c.WorkerRole() != legacyRole || list != nil {
		return
	}
	if legacy == nil || *legacy {
		ps.add(legacyKey, "must be false in the shared config to run worker_app %s "+
			"(or list the workers in %s)", legacyRole, map[string]string{
			"send_federation": "federation_sender_instances",
			"start_pushers":   "pusher_instances",
		}[legacyKey])
	}
}

// validateLegacyDuty follows Synapse: the legacy app needs the legacy
// boolean set to false, and when both the legacy and the modern key are set
// they must agree about this instance.
func (c *Config) validateLegacyDuty(ps *problems, legacyKey string, legacy *bool, legacyRole, modernKey, designated string) {
	if c.WorkerRole() == legacyRole && (legacy == nil || *legacy) {
		ps.add(legacyKey, "must be false to run worker_app %s; better, use worker_app generic_worker with %s",
			legacyRole, modernKey)
		return
	}
	modern, legacyHere := c.dutyHere(designated, legacy, legacyRole)
	if modern != nil && legacyHere != nil && *modern != *legacyHere {
		ps.add(legacyKey, "contradicts %s: %q; remove %s", modernKey, designated, legacyKey)
	}
}

// channelPrefixRE keeps the prefix printable and free of the glob
// characters PSUBSCRIBE would treat specially.
var channelPrefixRE = regexp.MustCompile(`^[A-Za-z0-9._:/-]{1,100}$`)

func (c *Config) validateRedis(ps *problems) {
	r := c.Redis
	if r.Password != "" && r.PasswordPath != "" {
		ps.add("redis.password_path", "cannot be used together with redis.password")
	}
	if r.Path == "" && (r.Port < 1 || r.Port > 65535) {
		ps.add("redis.port", "must be between 1 and 65535, got %d", r.Port)
	}
	if r.DBID < 0 {
		ps.add("redis.dbid", "must not be negative")
	}
	if (r.CertificateFile == "") != (r.PrivateKeyFile == "") {
		ps.add("redis.private_key_file", "redis.certificate_file and redis.private_key_file go together")
	}
	for _, f := range []struct{ key, path string }{{"redis.certificate_file", r.CertificateFile},
		{"redis.private_key_file", r.PrivateKeyFile}, {"redis.ca_file", r.CAFile}, {"redis.ca_path", r.CAPath}} {
		if f.path == "" {
			continue
		}
		if !r.UseTLS {
			ps.add(f.key, "needs redis.use_tls: true")
		} else if _, err := os.Stat(f.path); err != nil {
			ps.add(f.key, "%v", err)
		}
	}
	if r.ChannelPrefix != "" && !channelPrefixRE.MatchString(r.ChannelPrefix) {
		ps.add("redis.channel_prefix", "must be at most 100 characters of letters, digits and . _ : / -, got %q", r.ChannelPrefix)
	}
	// Redis carries the replication stream; without it workers never hear
	// about new data. The router only proxies HTTP.
	if c.isFleet() && !r.Enabled && c.WorkerRole() != RoleRouter {
		ps.add("redis.enabled", "must be true when running workers")
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
