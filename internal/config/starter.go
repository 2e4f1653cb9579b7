package config

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"strings"
	"text/template"

	"gopkg.in/yaml.v3"
)

// GenerateStarter returns a commented homeserver.yaml for the single-process
// demo: one loopback listener on port 8008, SQLite and media under dataDir,
// open registration, fresh random secrets. dataDir is made absolute (against
// the working directory) so the file can be saved anywhere without its
// paths moving, since Load resolves relative paths against the file's own
// directory.
func GenerateStarter(serverName, dataDir string) ([]byte, error) {
	if err := checkServerName(serverName); err != nil {
		return nil, fmt.Errorf("generate config: %w", err)
	}
	if dataDir == "" {
		return nil, fmt.Errorf("generate config: data directory required")
	}
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("generate config: %w", err)
	}
	var secrets [3]string
	for i := range secrets {
		if secrets[i], err = randomSecret(); err != nil {
			return nil, fmt.Errorf("generate config: %w", err)
		}
	}
	d := Default()
	data := map[string]any{
		"ServerName":     serverName,
		"BaseURL":        "http://127.0.0.1:8008/",
		"DatabasePath":   filepath.Join(dir, "homeserver.db"),
		"SigningKey":     filepath.Join(dir, serverName+".signing.key"),
		"MediaStore":     filepath.Join(dir, "media_store"),
		"RegSecret":      secrets[0],
		"MacaroonSecret": secrets[1],
		"FormSecret":     secrets[2],
		"D":              d,
	}
	var buf bytes.Buffer
	if err := starterTemplate().Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("generate config: %w", err)
	}
	return buf.Bytes(), nil
}

func randomSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// yamlScalar renders s as a YAML scalar, quoting only when needed, so odd
// server names or paths cannot break the file.
func yamlScalar(s string) (string, error) {
	b, err := yaml.Marshal(s)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

func starterTemplate() *template.Template {
	return template.Must(template.New("homeserver.yaml").
		Funcs(template.FuncMap{"q": yamlScalar}).
		Parse(starterText))
}

const starterText = `# Ganglion homeserver configuration — single-process demo.
#
# Ganglion reads Synapse's configuration format: the keys below mean what
# they mean in Synapse's configuration manual. Relative paths in this file
# are resolved against the directory of the first config file given with -c.

# The domain in your users' IDs (@alice:{{.ServerName}}) and room aliases.
# It cannot be changed once users exist.
server_name: {{q .ServerName}}

# The URL clients use to reach this server. Change it when you put the
# server behind a reverse proxy or a real domain.
public_baseurl: {{q .BaseURL}}

# Where to listen. Loopback only: this demo is not meant to be reachable from
# other machines. For a public server, put a TLS reverse proxy in front and
# set x_forwarded: true so client IPs are taken from X-Forwarded-For.
listeners:
  - port: 8008
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client, federation]
        compress: false

# SQLite is enough for one process. To switch to PostgreSQL (required for
# workers), create a database with UTF8 encoding, then replace this
# section with:
#
#   database:
#     name: psycopg2
#     args:
#       user: ganglion
#       password: secret
#       database: ganglion
#       host: localhost
#       port: 5432
#       cp_min: 5
#       cp_max: 10
#
# or set GANGLION_DATABASE_URL=postgres://ganglion:secret@localhost/ganglion,
# which overrides this section.
database:
  name: sqlite3
  args:
    database: {{q .DatabasePath}}

# File holding this server's Ed25519 signing key. Keep it and back it up:
# other servers remember the key and reject events signed with a new one.
signing_key_path: {{q .SigningKey}}

# Servers asked to vouch for other servers' signing keys (POST
# /_matrix/key/v2/query); a server's own keys are fetched from it when they
# do not have them. Synapse's default, written out as Synapse's generated
# config does so that it is a choice: [] asks servers only. Add
# verify_keys ({"ed25519:auto": "<base64 key>"}) to check a notary's
# signatures.
trusted_key_servers:
  - server_name: "matrix.org"

# DEMO ONLY: anyone who can reach the server may register without an email
# or a token. Turn both off before exposing the server.
enable_registration: true
enable_registration_without_verification: true

# Lets an administrator create accounts through the admin registration API
# even when registration is closed. Keep it secret.
registration_shared_secret: {{q .RegSecret}}

# Secrets for access tokens and forms. Changing them logs everybody out.
macaroon_secret_key: {{q .MacaroonSecret}}
form_secret: {{q .FormSecret}}

# Access token lifetimes, as durations (90s, 5m, 12h, 30d). A client that
# asks for a refresh token gets access tokens lasting
# refreshable_access_token_lifetime (default 5m) and renews them with
# POST /refresh; other tokens last until logout unless limited here. No
# token outlives session_lifetime, counted from the login.
#refreshable_access_token_lifetime: 5m
#refresh_token_lifetime: 7d
#nonrefreshable_access_token_lifetime: 1d
#session_lifetime: 30d

# Push: enabled: false turns push rule evaluation off (no notifications,
# unread counts or pushes).
#push:
#  enabled: true

# Email notifications: users add an email pusher (kind email, app_id
# m.email, their address as pushkey) and get their unread messages mailed
# once notif_delay_before_mail has passed.
#email:
#  enable_notifs: true
#  smtp_host: localhost
#  smtp_port: 25
#  smtp_user: matrix
#  smtp_pass: secret
#  require_transport_security: false
#  enable_tls: true
#  notif_from: "%(app)s <noreply@{{.ServerName}}>"
#  app_name: Matrix
#  client_base_url: https://app.element.io
#  notif_delay_before_mail: 10m

# Largest upload accepted, with a K, M or G suffix.
max_upload_size: {{q (print .D.MaxUploadSize)}}

# Where uploaded media is stored.
media_store_path: {{q .MediaStore}}

# Rate limits: per_second tokens refill each second, up to burst_count.
# These are the defaults, written out so they are easy to tune.
rc_message:
  per_second: {{.D.RCMessage.PerSecond}}
  burst_count: {{.D.RCMessage.BurstCount}}
rc_registration:
  per_second: {{.D.RCRegistration.PerSecond}}
  burst_count: {{.D.RCRegistration.BurstCount}}
rc_login:
  address:
    per_second: {{.D.RCLogin.Address.PerSecond}}
    burst_count: {{.D.RCLogin.Address.BurstCount}}
  account:
    per_second: {{.D.RCLogin.Account.PerSecond}}
    burst_count: {{.D.RCLogin.Account.BurstCount}}
  failed_attempts:
    per_second: {{.D.RCLogin.FailedAttempts.PerSecond}}
    burst_count: {{.D.RCLogin.FailedAttempts.BurstCount}}

# Logging defaults to level info in text format on stderr. To change it,
# point log_config at a YAML file such as:
#
#   level: debug   # debug | info | warn | error
#   format: json   # text | json
#
#log_config: /path/to/log.yaml

# Do not send anonymous usage statistics.
report_stats: false
`
