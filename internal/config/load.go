package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Environment variables that override the files.
const (
	EnvDatabaseURL = "GANGLION_DATABASE_URL"
	EnvRedisURL    = "GANGLION_REDIS_URL"
)

// Load reads the YAML files in order, merges them, applies environment
// overrides (env is usually os.Getenv; nil means none) and defaults, and
// validates the result. See the package documentation for the exact rules.
//
// Unreadable or unparsable files give a plain error. Type errors, bad
// environment values, unreadable secret or log files and every Validate
// problem come back together as a *ValidationError.
func Load(paths []string, env func(string) string) (*Config, error) {
	if len(paths) == 0 {
		return nil, errors.New("load config: no config file given")
	}
	if env == nil {
		env = func(string) string { return "" }
	}

	merged := map[string]any{}
	var typeProblems []Problem
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("load config: %w", err)
		}
		var doc any
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return nil, fmt.Errorf("load config %s: %w", p, err)
		}
		m, ok := normalizeYAML(doc).(map[string]any)
		if doc != nil && !ok {
			return nil, fmt.Errorf("load config %s: top level must be a mapping of keys", p)
		}
		// Type-check each file on its own so errors point at a file and a
		// line; the merged document has no meaningful line numbers.
		if err := yaml.Unmarshal(data, Default()); err != nil {
			typeProblems = append(typeProblems, yamlProblems(p, err)...)
		}
		mergeInto(merged, m)
	}
	if len(typeProblems) > 0 {
		return nil, &ValidationError{Problems: typeProblems}
	}

	c := Default()
	var node yaml.Node
	if err := node.Encode(merged); err != nil {
		return nil, fmt.Errorf("load config: re-encode merged config: %w", err)
	}
	if err := node.Decode(c); err != nil {
		// Every value came from a file that decoded cleanly above, so this
		// is a bug rather than a user error.
		return nil, fmt.Errorf("load config: decode merged config: %w", err)
	}
	c.UnknownKeys = unknownKeys(merged)
	c.NotBuiltKeys = notBuiltKeys(merged)

	dir, err := filepath.Abs(filepath.Dir(paths[0]))
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	c.ConfigDir = dir
	c.resolvePaths(dir)

	problems := c.applyEnv(env)
	c.ApplyDefaults()
	problems = append(problems, c.readFiles()...)
	if err := c.Validate(); err != nil {
		var ve *ValidationError
		if !errors.As(err, &ve) {
			return nil, err
		}
		problems = append(problems, ve.Problems...)
	}
	if len(problems) > 0 {
		return nil, &ValidationError{Problems: problems}
	}
	return c, nil
}

// yamlProblems turns a decode error into problems located by file and line.
func yamlProblems(path string, err error) []Problem {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		out := make([]Problem, 0, len(te.Errors))
		for _, e := range te.Errors {
			out = append(out, Problem{Path: path, Message: e})
		}
		return out
	}
	return []Problem{{Path: path, Message: err.Error()}}
}

// normalizeYAML gives every mapping string keys. yaml.v3 produces
// map[any]any when a key is not a string (port numbers as instance names,
// say); merging needs one key type.
func normalizeYAML(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = normalizeYAML(x)
		}
		return v
	case map[any]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[fmt.Sprint(k)] = normalizeYAML(x)
		}
		return out
	case []any:
		for i, x := range v {
			v[i] = normalizeYAML(x)
		}
		return v
	}
	return v
}

// mergeInto merges src into dst: mappings merge recursively, anything else
// in src replaces dst's value, and a null in src deletes the key so that a
// later file can restore a default.
func mergeInto(dst, src map[string]any) {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sm, srcIsMap := v.(map[string]any)
		dm, dstIsMap := dst[k].(map[string]any)
		if srcIsMap && dstIsMap {
			mergeInto(dm, sm)
			continue
		}
		if srcIsMap {
			// Copy so nulls inside are dropped consistently.
			fresh := map[string]any{}
			mergeInto(fresh, sm)
			v = fresh
		}
		dst[k] = v
	}
}

// unknownKeys lists the top-level keys that no Config field reads.
func unknownKeys(m map[string]any) []string {
	known := map[string]bool{}
	t := reflect.TypeOf(Config{})
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			known[name] = true
		}
	}
	var out []string
	for k := range m {
		if !known[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// resolvePaths makes relative file paths absolute against dir.
func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.PIDFile)
	abs(&c.SigningKeyPath)
	abs(&c.MediaStorePath)
	abs(&c.LogConfig)
	abs(&c.WorkerLogConfig)
	abs(&c.WorkerPIDFile)
	abs(&c.RegistrationSharedSecretPath)
	abs(&c.WorkerReplicationSecretPath)
	abs(&c.Redis.PasswordPath)
	abs(&c.TURNSharedSecretPath)
	abs(&c.TLSCertificatePath)
	abs(&c.TLSPrivateKeyPath)
	abs(&c.Redis.CertificateFile)
	abs(&c.Redis.PrivateKeyFile)
	abs(&c.Redis.CAFile)
	abs(&c.Redis.CAPath)
	for i := range c.FederationCustomCAList {
		abs(&c.FederationCustomCAList[i])
	}
	for i := range c.AppServiceConfigFiles {
		abs(&c.AppServiceConfigFiles[i])
	}
	if c.Database.Name == DatabaseSQLite || c.Database.Name == "" {
		db := c.Database.Args.Database
		// ":memory:" and "file:" URIs are not plain paths.
		if db != ":memory:" && !strings.HasPrefix(db, "file:") {
			abs(&c.Database.Args.Database)
		}
	}
}

// applyEnv applies GANGLION_DATABASE_URL and GANGLION_REDIS_URL.
func (c *Config) applyEnv(env func(string) string) []Problem {
	var problems []Problem
	if s := strings.TrimSpace(env(EnvDatabaseURL)); s != "" {
		db, err := databaseFromURL(s)
		if err != nil {
			problems = append(problems, Problem{Path: EnvDatabaseURL, Message: err.Error()})
		} else {
			// The URL says where to connect; pool sizing stays with the file.
			db.Args.CPMin, db.Args.CPMax = c.Database.Args.CPMin, c.Database.Args.CPMax
			c.Database = db
		}
	}
	if s := strings.TrimSpace(env(EnvRedisURL)); s != "" {
		if err := c.Redis.applyURL(s); err != nil {
			problems = append(problems, Problem{Path: EnvRedisURL, Message: err.Error()})
		}
	}
	return problems
}

// applyURL applies redis://[:password@]host[:port][/db], rediss:// (TLS)
// or unix:///path/to/socket[?db=N]. Errors never echo the password.
func (r *RedisConfig) applyURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a valid redis:// URL")
	}
	next := *r
	next.Enabled = true
	switch u.Scheme {
	case "redis", "rediss":
		next.UseTLS = u.Scheme == "rediss"
		next.Path = ""
		next.Host = u.Hostname()
		if next.Host == "" {
			next.Host = "localhost"
		}
		next.Port = 6379
		if p := u.Port(); p != "" {
			if next.Port, err = strconv.Atoi(p); err != nil {
				return errors.New("invalid port in redis URL")
			}
		}
		next.DBID = 0
		if db := strings.Trim(u.Path, "/"); db != "" {
			if next.DBID, err = strconv.Atoi(db); err != nil {
				return fmt.Errorf("invalid database number %q in redis URL", db)
			}
		}
	case "unix":
		next.Path = u.Path
		next.DBID = 0
		if db := u.Query().Get("db"); db != "" {
			if next.DBID, err = strconv.Atoi(db); err != nil {
				return fmt.Errorf("invalid database number %q in redis URL", db)
			}
		}
	default:
		return fmt.Errorf("unsupported scheme %q: want redis://, rediss:// or unix://", u.Scheme)
	}
	if u.User != nil {
		// Redis ACL users other than "default" have no config key to go to;
		// refusing is better than authenticating as the wrong user.
		if name := u.User.Username(); name != "" && name != "default" {
			return errors.New("redis URL names a user; only a password (redis://:password@host) is supported")
		}
		if pw, ok := u.User.Password(); ok {
			next.Password, next.PasswordPath = pw, ""
		}
	}
	*r = next
	return nil
}

// ApplyDefaults fills values that depend on other settings and maps legacy
// keys to their modern form. It is idempotent; Load calls it after the
// environment overrides, and code that builds a Config by hand should call
// it before Validate.
func (c *Config) ApplyDefaults() {
	for _, ls := range [][]Listener{c.MainListeners, c.WorkerListeners} {
		for i := range ls {
			if len(ls[i].BindAddresses) == 0 {
				// Synapse's default: every interface, IPv6 and IPv4.
				ls[i].BindAddresses = []string{"::", "0.0.0.0"}
			}
		}
	}
	if c.PublicBaseURL != "" && !strings.HasSuffix(c.PublicBaseURL, "/") {
		c.PublicBaseURL += "/"
	}

	if c.Database.Name == "" {
		c.Database.Name = DatabaseSQLite
	}
	switch c.Database.Name {
	case DatabaseSQLite:
		if c.Database.Args.Database == "" {
			c.Database.Args.Database = c.inConfigDir("homeserver.db")
		}
	case DatabasePostgres:
		// Synapse's pool defaults.
		if c.Database.Args.CPMin == 0 {
			c.Database.Args.CPMin = 5
		}
		if c.Database.Args.CPMax == 0 {
			c.Database.Args.CPMax = 10
		}
	}
	if c.MediaStorePath == "" {
		c.MediaStorePath = c.inConfigDir("media_store")
	}

	// "master" is Synapse's internal name for main.
	if loc, ok := c.InstanceMap["master"]; ok {
		if _, clash := c.InstanceMap[MainInstance]; !clash {
			c.InstanceMap[MainInstance] = loc
			delete(c.InstanceMap, "master")
		}
	}
	if _, ok := c.InstanceMap[MainInstance]; !ok &&
		c.WorkerReplicationHost != "" && c.WorkerReplicationHTTPPort != 0 {
		if c.InstanceMap == nil {
			c.InstanceMap = map[string]InstanceLocation{}
		}
		c.InstanceMap[MainInstance] = InstanceLocation{
			Host: c.WorkerReplicationHost,
			Port: c.WorkerReplicationHTTPPort,
			TLS:  c.WorkerReplicationHTTPTLS,
		}
	}
	for _, s := range writerStreams() {
		renameMaster(*c.Writers.field(s))
	}
	renameMaster(c.FederationSenderInstances)
	renameMaster(c.PusherInstances)
	renameMaster(c.OutboundFederationRestrictedTo)
	for _, p := range []*string{&c.RunBackgroundTasksOn, &c.MediaInstanceRunningBackgroundJobs,
		&c.UpdateUserDirectoryFromWorker, &c.NotifyAppservicesFromWorker} {
		if *p == "master" {
			*p = MainInstance
		}
	}
}

func (c *Config) inConfigDir(name string) string {
	if c.ConfigDir == "" {
		return name
	}
	return filepath.Join(c.ConfigDir, name)
}

func renameMaster(list []string) {
	for i, v := range list {
		if v == "master" {
			list[i] = MainInstance
		}
	}
}

// readFiles reads the secret files and this process's log config. Problems
// are reported against the key that named the file.
func (c *Config) readFiles() []Problem {
	var problems []Problem
	read := func(key, path string, dst *string) {
		if path == "" {
			return
		}
		data, err := os.ReadFile(path)
		if err != nil {
			problems = append(problems, Problem{Path: key, Message: err.Error()})
			return
		}
		*dst = strings.TrimSpace(string(data))
	}
	// When the inline value is also set Validate reports the conflict; the
	// file is not read so that a missing file does not add noise.
	if c.WorkerReplicationSecret == "" {
		read("worker_replication_secret_path", c.WorkerReplicationSecretPath, &c.replicationSecretFromFile)
	}
	if c.RegistrationSharedSecret == "" {
		read("registration_shared_secret_path", c.RegistrationSharedSecretPath, &c.registrationSecretFromFile)
	}
	if c.Redis.Password == "" {
		read("redis.password_path", c.Redis.PasswordPath, &c.Redis.passwordFromFile)
	}

	if c.TURNSharedSecret == "" {
		read("turn_shared_secret_path", c.TURNSharedSecretPath, &c.turnSecretFromFile)
	}

	problems = append(problems, c.loadTLS()...)
	problems = append(problems, c.loadFederationCAs()...)

	// As in Synapse, a worker logs per worker_log_config and never uses the
	// main process's log_config from the shared file.
	key, path := "log_config", c.LogConfig
	if !c.IsMain() {
		key, path = "worker_log_config", c.WorkerLogConfig
	}
	c.Logging = DefaultLogSettings()
	if path != "" {
		ls, err := ReadLogConfig(path)
		if err != nil {
			problems = append(problems, Problem{Path: key, Message: err.Error()})
		} else {
			c.Logging = ls
		}
	}
	return problems
}

// loadTLS reads the certificate and key when one of this process's
// listeners serves TLS, so a bad file stops the start with the key that
// named it instead of failing at the first handshake.
func (c *Config) loadTLS() []Problem {
	if !slices.ContainsFunc(c.Listeners(), func(l Listener) bool { return l.TLS }) ||
		c.TLSCertificatePath == "" || c.TLSPrivateKeyPath == "" {
		return nil // Validate reports the missing keys
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCertificatePath, c.TLSPrivateKeyPath)
	if err != nil {
		return []Problem{{Path: "tls_certificate_path", Message: fmt.Sprintf("load certificate and tls_private_key_path: %v", err)}}
	}
	c.tlsCert = &cert
	return nil
}

// TLSCertificate is the certificate of the TLS listeners, loaded by Load
// (nil when no listener of this process has tls: true).
func (c *Config) TLSCertificate() *tls.Certificate { return c.tlsCert }
