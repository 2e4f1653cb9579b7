package config

import (
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Synapse database driver names, the values of database.name.
const (
	DatabaseSQLite   = "sqlite3"
	DatabasePostgres = "psycopg2"
)

// Engine is the storage engine behind a database config.
type Engine string

const (
	EngineSQLite   Engine = "sqlite"
	EnginePostgres Engine = "postgres"
)

// DatabaseConfig is the database section. Name keeps Synapse's driver
// names; Engine and DSN translate them for Go drivers.
type DatabaseConfig struct {
	Name string       `yaml:"name"`
	Args DatabaseArgs `yaml:"args"`
}

// DatabaseArgs are psycopg2's (or sqlite3's) connection arguments. For
// sqlite3 only Database (the file path) matters.
type DatabaseArgs struct {
	Database string // psycopg2 also accepts "dbname"
	User     string
	Password string
	Host     string // a path starting with "/" is a Unix socket directory
	Port     int
	CPMin    int // connection pool minimum (cp_min)
	CPMax    int // connection pool maximum (cp_max)
	SSLMode  string
	// Extra holds every other argument as written (keepalives_idle,
	// application_name, connect_timeout, txn_limit, …).
	Extra map[string]any
}

// UnmarshalYAML reads args as a loose mapping, like psycopg2 does: ports may
// be numbers or numeric strings, and arguments Ganglion has no field for are
// kept in Extra rather than dropped.
func (a *DatabaseArgs) UnmarshalYAML(n *yaml.Node) error {
	var raw map[string]any
	if err := n.Decode(&raw); err != nil {
		return err
	}
	for k, v := range raw {
		var err error
		switch k {
		case "database", "dbname":
			a.Database, err = argString(v)
		case "user":
			a.User, err = argString(v)
		case "password":
			a.Password, err = argString(v)
		case "host":
			a.Host, err = argString(v)
		case "sslmode":
			a.SSLMode, err = argString(v)
		case "port":
			a.Port, err = argInt(v)
		case "cp_min":
			a.CPMin, err = argInt(v)
		case "cp_max":
			a.CPMax, err = argInt(v)
		default:
			if a.Extra == nil {
				a.Extra = map[string]any{}
			}
			a.Extra[k] = v
		}
		if err != nil {
			return fmt.Errorf("line %d: database.args.%s: %w", n.Line, k, err)
		}
	}
	return nil
}

// MarshalYAML mirrors UnmarshalYAML so a Config can be written back out.
func (a DatabaseArgs) MarshalYAML() (any, error) {
	out := map[string]any{}
	for k, v := range a.Extra {
		out[k] = v
	}
	set := func(k string, v any, zero bool) {
		if !zero {
			out[k] = v
		}
	}
	set("database", a.Database, a.Database == "")
	set("user", a.User, a.User == "")
	set("password", a.Password, a.Password == "")
	set("host", a.Host, a.Host == "")
	set("sslmode", a.SSLMode, a.SSLMode == "")
	set("port", a.Port, a.Port == 0)
	set("cp_min", a.CPMin, a.CPMin == 0)
	set("cp_max", a.CPMax, a.CPMax == 0)
	return out, nil
}

func argString(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(v), nil
	case nil:
		return "", nil
	}
	return "", fmt.Errorf("want a string, got %T", v)
}

func argInt(v any) (int, error) {
	switch v := v.(type) {
	case int:
		return v, nil
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("want an integer, got %q", v)
		}
		return n, nil
	case nil:
		return 0, nil
	}
	return 0, fmt.Errorf("want an integer, got %T", v)
}

// Engine maps Name to an Engine; "" for an unsupported name.
func (d DatabaseConfig) Engine() Engine {
	switch d.Name {
	case DatabaseSQLite:
		return EngineSQLite
	case DatabasePostgres:
		return EnginePostgres
	}
	return ""
}

// pgxParams are the psycopg2 (libpq) arguments that pgx understands as
// connection settings. Anything else in Extra is left out of the DSN: pgx
// would send unknown keys to the server as run-time parameters, and libpq
// options such as keepalives_idle are not server parameters.
func pgxParams() map[string]bool {
	return map[string]bool{
		"connect_timeout": true, "sslkey": true, "sslcert": true, "sslrootcert": true,
		"sslpassword": true, "sslcertmode": true, "sslnegotiation": true, "sslsni": true,
		"target_session_attrs": true, "passfile": true, "krbsrvname": true, "krbspn": true,
		"service": true, "servicefile": true, "channel_binding": true, "require_auth": true,
		"min_protocol_version": true, "max_protocol_version": true,
		// A real server run-time parameter, so passing it through is right.
		"application_name": true,
	}
}

// DSN is the connection string for the engine: the database file path for
// SQLite, a postgres:// URL for pgx built from the psycopg2 args. The pool
// sizes (CPMin, CPMax) are not in it; set them on the pool config.
func (d DatabaseConfig) DSN() string {
	if d.Engine() != EnginePostgres {
		return d.Args.Database
	}
	a := d.Args
	u := url.URL{Scheme: "postgres", Path: "/" + a.Database}
	switch {
	case a.User != "" && a.Password != "":
		u.User = url.UserPassword(a.User, a.Password)
	case a.User != "":
		u.User = url.User(a.User)
	case a.Password != "":
		u.User = url.UserPassword("", a.Password)
	}
	q := url.Values{}
	host := a.Host
	if strings.HasPrefix(host, "/") {
		// A Unix socket directory cannot go in the URL authority.
		q.Set("host", host)
		host = ""
	}
	switch {
	case host != "" && a.Port != 0:
		u.Host = net.JoinHostPort(host, strconv.Itoa(a.Port))
	case host != "":
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		u.Host = host
	case a.Port != 0:
		q.Set("port", strconv.Itoa(a.Port))
	}
	if a.SSLMode != "" {
		q.Set("sslmode", a.SSLMode)
	}
	allowed := pgxParams()
	keys := make([]string, 0, len(a.Extra))
	for k := range a.Extra {
		if allowed[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		q.Set(k, fmt.Sprint(a.Extra[k]))
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// databaseFromURL turns GANGLION_DATABASE_URL into a database section:
// postgres:// or postgresql:// → psycopg2; sqlite:///abs/path,
// sqlite://rel/path or a bare path ending in .db → sqlite3. Errors never
// echo the value, which may hold a password.
func databaseFromURL(s string) (DatabaseConfig, error) {
	switch {
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"):
		u, err := url.Parse(s)
		if err != nil {
			return DatabaseConfig{}, fmt.Errorf("not a valid postgres:// URL")
		}
		a := DatabaseArgs{
			Database: strings.TrimPrefix(u.Path, "/"),
			User:     u.User.Username(),
			Host:     u.Hostname(),
		}
		a.Password, _ = u.User.Password()
		if p := u.Port(); p != "" {
			if a.Port, err = strconv.Atoi(p); err != nil {
				return DatabaseConfig{}, fmt.Errorf("invalid port in postgres:// URL")
			}
		}
		for k, vs := range u.Query() {
			v := vs[len(vs)-1]
			switch k {
			case "sslmode":
				a.SSLMode = v
			case "host":
				a.Host = v
			case "port":
				if a.Port, err = strconv.Atoi(v); err != nil {
					return DatabaseConfig{}, fmt.Errorf("invalid port in postgres:// URL")
				}
			case "user":
				a.User = v
			case "password":
				a.Password = v
			case "dbname", "database":
				a.Database = v
			default:
				if a.Extra == nil {
					a.Extra = map[string]any{}
				}
				a.Extra[k] = v
			}
		}
		return DatabaseConfig{Name: DatabasePostgres, Args: a}, nil
	case strings.HasPrefix(s, "sqlite://"):
		path := strings.TrimPrefix(s, "sqlite://")
		if path == "" {
			return DatabaseConfig{}, fmt.Errorf("sqlite:// URL has no path")
		}
		return DatabaseConfig{Name: DatabaseSQLite, Args: DatabaseArgs{Database: path}}, nil
	case !strings.Contains(s, "://") && strings.HasSuffix(s, ".db"):
		return DatabaseConfig{Name: DatabaseSQLite, Args: DatabaseArgs{Database: s}}, nil
	}
	scheme, _, found := strings.Cut(s, "://")
	if !found {
		return DatabaseConfig{}, fmt.Errorf("want a postgres:// or sqlite:/// URL, or a path ending in .db")
	}
	return DatabaseConfig{}, fmt.Errorf("unsupported scheme %q: want postgres://, postgresql:// or sqlite://", scheme)
}
