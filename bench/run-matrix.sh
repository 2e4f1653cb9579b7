#!/usr/bin/env bash
# Runs the benchmark matrix on this machine, one deployment after another,
# and writes bench/RESULTS.md.
#
#   bench/run-matrix.sh                         monolith on SQLite and on PostgreSQL, every scenario, default sizes
#   bench/run-matrix.sh --small                 small sizes: checks that everything runs (figures mean little)
#   bench/run-matrix.sh --targets postgres      only these deployments (comma-separated: sqlite, postgres, postgres-nopush, postgres-nometrics, fleet, fleet-direct, federation)
#   bench/run-matrix.sh --targets federation    issue 15: two PostgreSQL monoliths federating over TLS (a throw-away CA made
#                                               with openssl), messages sent on the first at 100/s reach a client syncing
#                                               on the second (-scenario federation; run only when named)
#   bench/run-matrix.sh --pprof                 also save CPU and heap profiles of every scenario (the
#                                               monoliths' metrics listener then also names the pprof resource)
#   bench/run-matrix.sh -- -scenario send,fanout -fanout-members 1000
#                                               everything after -- goes to every bench run
#   bench/run-matrix.sh --targets postgres -- -scenario search,userdir
#                                               issue 14: search over 100,000 messages, the
#                                               user directory over 10,000 users (run only when named)
#
# It builds ganglion and bench, starts a throw-away PostgreSQL (as scripts/test
# does: under the ganglion-test user when run as root), measures PostgreSQL's
# own single-row insert rate with pgbench, then for each deployment starts it
# with a generated config (bcrypt_rounds 4, rate limits out of the way, open
# registration), runs bench against it and stops it.
#
# Environment:
#   GANGLION_GO_LOCK      lock file every go command runs under (flock), for shared machines
#   BENCH_PG_FAST=1       PostgreSQL without durability (fsync, synchronous_commit off), as scripts/test
#                         runs it; default is PostgreSQL's durable defaults
#   BENCH_PGBENCH_SECONDS length of the pgbench run (default 10)
#   BENCH_OUT             the report file (default bench/RESULTS.md)
#   BENCH_KEEP=1          keep the work directory (configs, server logs, JSON lines, profiles)
#
# Adding a deployment: write a start function that sets SERVER_URLS (client
# base URLs, comma-separated), SERVER_PIDS (every process, comma-separated)
# and SERVER_PPROF (metrics listener base URLs), then call
#   run_target NAME "$SERVER_URLS" "$SERVER_PIDS" "$SERVER_PPROF"
# and stop it; see start_monolith and the fleet section below.
set -euo pipefail

cd "$(dirname "$0")/.."

command_line="bench/run-matrix.sh${*:+ $*}"
targets="sqlite,postgres,fleet,fleet-direct"
small=0
want_pprof=0
extra=()
while [[ $# -gt 0 ]]; do
	case "$1" in
	--small) small=1 ;;
	--pprof) want_pprof=1 ;;
	--targets) targets=${2:?--targets needs a list}; shift ;;
	--targets=*) targets=${1#--targets=} ;;
	--) shift; extra=("$@"); break ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "run-matrix: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
	shift
done

out=${BENCH_OUT:-bench/RESULTS.md}
tmp=""
pg_bin=""
pg_data=""
pg_port=""
run_as=()
server_pid=""
other_pid="" # the first server of the federation pair while server_pid is the second
redis_pid=""
server_name="bench.localhost"
extra_listener=""
fed_remote_url=""
root=$PWD
results=()
failed=()
pgbench_tps=""
pg_settings=""

log() { printf 'run-matrix: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_server
	if [[ -n "$other_pid" ]]; then
		server_pid=$other_pid other_pid=""
		stop_server
	fi
	[[ -n "$redis_pid" ]] && kill "$redis_pid" 2>/dev/null
	if [[ -n "$pg_data" && -f "$pg_data/postmaster.pid" ]]; then
		(cd "$tmp" && "${run_as[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m immediate -w stop >/dev/null 2>&1) || true
	fi
	if [[ -n "$tmp" ]]; then
		if [[ "${BENCH_KEEP:-}" == 1 || $want_pprof == 1 ]]; then
			log "work directory kept: $tmp"
		else
			rm -rf "$tmp"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

gocmd() {
	if [[ -n "${GANGLION_GO_LOCK:-}" ]]; then
		flock "$GANGLION_GO_LOCK" go "$@"
	else
		go "$@"
	fi
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

find_pg_bin() {
	local initdb
	initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
	[[ -n "$initdb" ]] && dirname "$initdb"
}

# A port nothing listens on now; callers retry if someone takes it first.
free_port() {
	local port
	for _ in $(seq 1 100); do
		port=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return 0
		fi
	done
	die "no free TCP port found"
}

# The same throw-away cluster as scripts/test, with PostgreSQL's durable
# defaults unless BENCH_PG_FAST=1.
start_postgres() {
	pg_bin=$(find_pg_bin || true)
	if [[ -z "$pg_bin" ]]; then
		is_root || die "PostgreSQL is not installed (Debian: apt-get install postgresql)"
		log "installing postgresql with apt-get"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
		pg_bin=$(find_pg_bin || true)
		[[ -n "$pg_bin" ]] || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb"
	fi
	local owner
	owner=$(id -un)
	if is_root; then
		# initdb and postgres refuse to run as root.
		owner=ganglion-test
		if ! id -u "$owner" >/dev/null 2>&1; then
			useradd --system --no-create-home --shell /usr/sbin/nologin "$owner"
		fi
		run_as=(runuser -u "$owner" --)
	fi
	pg_data="$tmp/pg"
	mkdir -p "$tmp/pgsock"
	chown "$owner" "$tmp/pgsock"
	chown "$owner" "$tmp"
	(cd "$tmp" && "${run_as[@]}" "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust \
		-E UTF8 --locale=C >"$tmp/initdb.log" 2>&1) ||
		{ cat "$tmp/initdb.log" >&2; die "initdb failed"; }
	pg_settings="max_connections=300, shared_buffers=128MB"
	local opts="-c max_connections=300 -c shared_buffers=128MB"
	if [[ "${BENCH_PG_FAST:-}" == 1 ]]; then
		opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
		pg_settings+=", fsync=off, synchronous_commit=off, full_page_writes=off"
	else
		pg_settings+=", durable defaults (fsync=on, synchronous_commit=on)"
	fi
	local port
	for _ in 1 2 3 4 5; do
		port=$(free_port)
		if (cd "$tmp" && "${run_as[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$tmp/postgres.log" -w -t 60 \
			-o "-h 127.0.0.1 -p $port -k $tmp/pgsock $opts" start >/dev/null); then
			local i
			for i in $(seq 1 100); do
				if "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then
					pg_port=$port
					log "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($pg_settings)"
					return 0
				fi
				sleep 0.1
			done
			die "PostgreSQL started but does not accept connections; log: $tmp/postgres.log"
		fi
		log "PostgreSQL did not start on port $port, retrying"
		tail -n 5 "$tmp/postgres.log" >&2 || true
	done
	die "could not start PostgreSQL"
}

psql_do() { "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }

# pgbench: 20 clients committing single-row inserts, the reference the
# send target is stated against.
run_pgbench() {
	local secs=${BENCH_PGBENCH_SECONDS:-10}
	psql_do -d postgres -c 'CREATE DATABASE pgbench_ref'
	psql_do -d pgbench_ref -c 'CREATE TABLE ins (id bigserial PRIMARY KEY, v integer NOT NULL, t timestamptz NOT NULL DEFAULT now())'
	printf '\\set v random(1, 1000000)\nINSERT INTO ins (v) VALUES (:v);\n' >"$tmp/insert.sql"
	log "pgbench: single-row inserts, 20 clients, ${secs}s"
	"$pg_bin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -n -c 20 -j 2 -T "$secs" -f "$tmp/insert.sql" pgbench_ref \
		>"$tmp/pgbench.log" 2>&1 || { cat "$tmp/pgbench.log" >&2; die "pgbench failed"; }
	pgbench_tps=$(sed -n 's/^tps = \([0-9]*\).*/\1/p' "$tmp/pgbench.log" | head -n 1)
	[[ -n "$pgbench_tps" ]] || { cat "$tmp/pgbench.log" >&2; die "no tps in pgbench output"; }
	log "pgbench: $pgbench_tps inserts/s"
}

# start_monolith NAME ENGINE: one `ganglion serve` with a generated config
# on sqlite or postgres; sets SERVER_URLS, SERVER_PIDS, SERVER_PPROF.
# start_redis runs a throw-away redis-server on a free port (the fleet's
# replication bus).
start_redis() {
	command -v redis-server >/dev/null || die "redis-server is not installed (scripts/test installs it)"
	redis_port=$(free_port)
	redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$tmp/redis.log" 2>&1 &
	redis_pid=$!
	local i
	for i in $(seq 1 100); do
		redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "redis-server did not start"
}

start_monolith() {
	local name=$1 engine=$2 extra=${3:-} dir="$tmp/$1" db
	mkdir -p "$dir"
	case "$engine" in
	sqlite) db="{\"name\": \"sqlite3\", \"args\": {\"database\": \"$dir/homeserver.db\"}}" ;;
	postgres)
		psql_do -d postgres -c "CREATE DATABASE ganglion_${name//-/_}"
		db="{\"name\": \"psycopg2\", \"args\": {\"host\": \"127.0.0.1\", \"port\": $pg_port, \"user\": \"postgres\", \"database\": \"ganglion_${name//-/_}\", \"cp_max\": 20}}"
		;;
	*) die "unknown engine $engine" ;;
	esac
	local attempt port mport
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		mport=$(free_port)
		write_config "$dir/homeserver.yaml" "$port" "$mport" "$db" "$dir" "$extra"
		"$tmp/ganglion" serve -c "$dir/homeserver.yaml" >"$dir/server.log" 2>&1 &
		server_pid=$!
		if wait_healthy "http://127.0.0.1:$port" "$server_pid"; then
			SERVER_URLS="http://127.0.0.1:$port"
			SERVER_PIDS="$server_pid"
			SERVER_PPROF="http://127.0.0.1:$mport"
			log "$name: ganglion serve (pid $server_pid) on $SERVER_URLS"
			return 0
		fi
		stop_server
		if grep -q "address already in use" "$dir/server.log" && [[ $attempt -lt 5 ]]; then
			log "$name: port taken ($(grep -m 1 "address already in use" "$dir/server.log")), retrying"
			continue
		fi
		tail -n 20 "$dir/server.log" >&2
		die "$name: server did not become healthy"
	done
}

# write_config PATH PORT METRICS_PORT DATABASE_JSON DIR [EXTRA_JSON_MEMBERS].
# JSON is YAML. EXTRA_JSON_MEMBERS ("key": value, …) are added to the config.
# $server_name is the server name; $extra_listener, if set, one more
# listener (a JSON object).
# Profiles are served only on a listener naming the pprof resource, so
# --pprof adds it to the metrics listener.
write_config() {
	local fast='{"per_second": 100000, "burst_count": 100000}'
	local metrics_names='"metrics"'
	[[ $want_pprof == 1 ]] && metrics_names='"metrics", "pprof"'
	cat >"$1" <<EOF
{
  "server_name": "$server_name",
  "public_baseurl": "http://127.0.0.1:$2/",
  "listeners": [
    {"port": $2, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false, "x_forwarded": false,
     "resources": [{"names": ["client"], "compress": false}]},
    {"port": $3, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false,
     "resources": [{"names": [$metrics_names], "compress": false}]}${extra_listener:+,
    $extra_listener}
  ],
${6:+  $6,
}
  "database": $4,
  "signing_key_path": "$5/signing.key",
  "media_store_path": "$5/media_store",
  "enable_registration": true,
  "enable_registration_without_verification": true,
  "bcrypt_rounds": 4,
  "report_stats": false,
  "rc_message": $fast,
  "rc_registration": $fast,
  "rc_login": {"address": $fast, "account": $fast, "failed_attempts": $fast},
  "rc_joins": {"local": $fast, "remote": $fast},
  "rc_room_creation": $fast,
  "rc_invites": {"per_room": $fast, "per_user": $fast, "per_issuer": $fast},
  "rc_joins_per_room": $fast,
  "rc_presence": {"per_user": $fast},
  "rc_user_directory": $fast
}
EOF
}

# wait_healthy URL PID: /health answers within 60 s while PID lives.
wait_healthy() {
	local i
	for i in $(seq 1 600); do
		kill -0 "$2" 2>/dev/null || return 1
		if curl -fsS -m 2 "$1/health" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

stop_server() {
	[[ -n "$server_pid" ]] || return 0
	if kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		local i
		for i in $(seq 1 300); do
			kill -0 "$server_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$server_pid" 2>/dev/null || true
	fi
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
}

size_args=()
if [[ $small == 1 ]]; then
	size_args=(-send-users 8 -send-rooms 2 -send-messages 5 -fanout-members 10 -fanout-messages 10
		-sync-rooms 5 -sync-events 20 -sync-repeats 3 -join-users 100 -join-batch 20
		-messages-events 300 -register-users 10 -logins 10
		-keys-users 20 -keys-repeats 10 -media-mib 2 -media-repeats 2
		-search-messages 2000 -search-queries 40 -userdir-users 300 -userdir-queries 40
		-federation-messages 100)
fi

# run_target NAME URLS PIDS [PPROF_URLS]: every scenario against a running
# deployment; its JSON lines go into the report.
run_target() {
	local name=$1 urls=$2 pids=$3 pprof=${4:-}
	local args=(-url "$urls" -pid "$pids" -label "$name" -progress 10s)
	# Media goes to the media worker, which only the router reaches: the
	# direct fleet runs every other scenario (-scenario in extra still wins).
	if [[ $name == fleet-direct ]]; then
		args+=(-scenario send,fanout,initial_sync,join,messages,register,keys_query,keys_claim)
	fi
	# The federation pair: users of the first server send, a user of the
	# second receives.
	if [[ $name == federation ]]; then
		args+=(-scenario federation -remote-url "$fed_remote_url")
	fi
	if [[ $want_pprof == 1 && -n "$pprof" ]]; then
		args+=(-pprof "$pprof" -pprof-dir "$tmp/profiles")
	fi
	log "$name: bench ${args[*]} ${size_args[*]} ${extra[*]}"
	if ! "$tmp/bench" "${args[@]}" "${size_args[@]}" "${extra[@]}" >"$tmp/$name.jsonl"; then
		failed+=("$name")
		log "$name: bench reported errors (see the table above)"
	fi
	results+=("$tmp/$name.jsonl")
	# The scale check: 1,000 members long-polling one room, a few
	# messages, no errors (PostgreSQL deployments, full-size runs only).
	if [[ $small == 0 && $name != sqlite && $name != federation && ${#extra[@]} == 0 ]]; then
		log "$name: fanout with 1000 members"
		if ! "$tmp/bench" "${args[@]}" -scenario fanout -fanout-members 1000 -fanout-messages 10 >"$tmp/$name-1000.jsonl"; then
			failed+=("$name (1000 members)")
		fi
		results+=("$tmp/$name-1000.jsonl")
	fi
}

# make_test_ca DIR: a throw-away CA (ca.crt) and a certificate for
# 127.0.0.1 signed by it (tls.crt, tls.key), for the federation pair.
make_test_ca() {
	local d=$1
	command -v openssl >/dev/null || die "openssl is needed for the federation target's test CA (Debian: apt-get install openssl)"
	mkdir -p "$d"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=Ganglion bench CA" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
		-keyout "$d/ca.key" -out "$d/ca.crt" >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; die "openssl: CA"; }
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
		-keyout "$d/tls.key" -out "$d/tls.csr" >>"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; die "openssl: key"; }
	printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' >"$d/ext.cnf"
	openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
		-extfile "$d/ext.cnf" -out "$d/tls.crt" >>"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; die "openssl: certificate"; }
}

# start_federation_pair: two PostgreSQL monoliths, federation-a and
# federation-b, each named by the IP and port of its TLS federation
# listener (so neither needs DNS), trusting the test CA, loopback allowed
# (private ranges are denied by default) and retrying a failed
# destination quickly. Sets SERVER_URLS (the first's client URL),
# fed_remote_url (the second's), SERVER_PIDS (both) and other_pid.
start_federation_pair() {
	local ca="$tmp/federation-ca" names=() urls=() pids=() i fport
	make_test_ca "$ca"
	for i in a b; do
		fport=$(free_port)
		server_name="127.0.0.1:$fport"
		extra_listener="{\"port\": $fport, \"bind_addresses\": [\"127.0.0.1\"], \"type\": \"http\", \"tls\": true, \"resources\": [{\"names\": [\"federation\", \"keys\"]}]}"
		start_monolith "federation-$i" postgres "\"tls_certificate_path\": \"$ca/tls.crt\", \"tls_private_key_path\": \"$ca/tls.key\",
  \"federation_custom_ca_list\": [\"$ca/ca.crt\"], \"ip_range_whitelist\": [\"127.0.0.1\"], \"trusted_key_servers\": [],
  \"federation\": {\"destination_min_retry_interval\": \"1s\", \"destination_max_retry_interval\": \"10s\"}"
		names+=("$server_name")
		urls+=("$SERVER_URLS")
		pids+=("$server_pid")
		[[ $i == a ]] && other_pid=$server_pid server_pid=""
	done
	server_name="bench.localhost" extra_listener=""
	SERVER_URLS=${urls[0]} fed_remote_url=${urls[1]} SERVER_PIDS="${pids[0]},${pids[1]}"
	log "federation: ${names[0]} (${urls[0]}) sends to ${names[1]} (${urls[1]})"
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gbench.XXXXXX")
chmod 755 "$tmp"

log "building ganglion and bench"
gocmd build -o "$tmp/ganglion" ./cmd/ganglion
gocmd build -o "$tmp/bench" ./bench

start_postgres
run_pgbench

IFS=, read -r -a target_list <<<"$targets"
for t in "${target_list[@]}"; do
	case "$t" in
	sqlite | postgres)
		start_monolith "$t" "$t"
		run_target "$t" "$SERVER_URLS" "$SERVER_PIDS" "$SERVER_PPROF"
		stop_server
		;;
	postgres-nopush)
		# The PostgreSQL monolith with push evaluation off (push.enabled:
		# false): against "postgres" in the same run, what evaluating every
		# member's push rules adds to a send (-scenario push_send).
		start_monolith "$t" postgres '"push": {"enabled": false}'
		run_target "$t" "$SERVER_URLS" "$SERVER_PIDS" "$SERVER_PPROF"
		stop_server
		;;
	postgres-nometrics)
		# The PostgreSQL monolith with enable_metrics: false (requests and
		# transactions not measured): against "postgres" in the same run,
		# what the instrumentation costs (-scenario send).
		start_monolith "$t" postgres '"enable_metrics": false'
		run_target "$t" "$SERVER_URLS" "$SERVER_PIDS" "$SERVER_PPROF"
		stop_server
		;;
	fleet | fleet-direct)
		# The example fleet (examples/fleet: main, two client workers, two
		# event persisters, one stream writer, the router) under `ganglion
		# up`, on its own database and a throw-away Redis, with the
		# benchmark's limits. "fleet" sends every request through the
		# router on 8008; "fleet-direct" spreads the clients over the two
		# workers (8081, 8082) itself, to measure what the router adds.
		db=ganglion_${t//-/_}
		start_redis
		psql_do -d postgres -c "CREATE DATABASE $db"
		mkdir -p "$tmp/$t"
		fast='{"per_second": 100000, "burst_count": 100000}'
		printf '{"bcrypt_rounds": 4, "enable_registration": true, "enable_registration_without_verification": true, "rc_message": %s, "rc_registration": %s, "rc_login": {"address": %s, "account": %s, "failed_attempts": %s}, "rc_joins": {"local": %s, "remote": %s}, "rc_joins_per_room": %s, "rc_room_creation": %s, "rc_invites": {"per_room": %s, "per_user": %s, "per_issuer": %s}, "rc_presence": {"per_user": %s}, "rc_user_directory": %s}\n' \
			"$fast" "$fast" "$fast" "$fast" "$fast" "$fast" "$fast" "$fast" "$fast" "$fast" "$fast" "$fast" "$fast" "$fast" >"$tmp/$t/bench.yaml"
		sed -e "s#^config: .*#config: [$root/examples/fleet/homeserver.yaml, $tmp/$t/bench.yaml]#" \
			-e "s#^run_dir: .*#run_dir: $tmp/$t/run#" "$root/examples/fleet/deployment.yaml" >"$tmp/$t/deployment.yaml"
		GANGLION_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/$db?sslmode=disable" \
			GANGLION_REDIS_URL="redis://127.0.0.1:$redis_port/0" \
			"$tmp/ganglion" up -c "$tmp/$t/deployment.yaml" >"$tmp/$t/up.log" 2>&1 &
		server_pid=$!
		for url in http://127.0.0.1:8008 http://127.0.0.1:8081 http://127.0.0.1:8082; do
			wait_healthy "$url" "$server_pid" || die "fleet did not come up (see $tmp/$t/up.log)"
		done
		urls=http://127.0.0.1:8008
		[[ $t == fleet-direct ]] && urls=http://127.0.0.1:8081,http://127.0.0.1:8082
		# every process of the fleet counts for peak RSS (the idle router
		# too in fleet-direct)
		SERVER_PIDS=$(pgrep -P "$server_pid" | paste -sd, -)
		run_target "$t" "$urls" "$SERVER_PIDS" ""
		stop_server
		# Wait for it: the next deployment's Redis may pick the same port.
		kill "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
		;;
	federation)
		start_federation_pair
		run_target "$t" "$SERVER_URLS" "$SERVER_PIDS" ""
		stop_server
		server_pid=$other_pid other_pid=""
		stop_server
		;;
	*) die "unknown target $t (want sqlite, postgres, postgres-nopush, postgres-nometrics, fleet, fleet-direct or federation)" ;;
	esac
done

# ---- RESULTS.md -------------------------------------------------------------
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
mem_gib=$(awk '/^MemTotal:/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git status --porcelain 2>/dev/null | head -n 1)" ]]; then
	commit+=" with uncommitted changes"
fi
sizes="the defaults of \`go run ./bench -h\`"
[[ $small == 1 ]] && sizes="--small (${size_args[*]})"
{
	echo "# Benchmark results"
	echo
	echo "Written by \`bench/run-matrix.sh\`; rerun it rather than editing by hand."
	echo
	echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "- Command: \`$command_line\`"
	echo "- Code: $commit; $(go version | awk '{print $3}')"
	echo "- Machine: $(nproc) cores ($cpu_model), $mem_gib GiB memory, $(uname -sr); the machine may be shared with other work, which inflates latencies"
	echo "- PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'): $pg_settings; Ganglion's pool cp_max 20. SQLite: WAL, synchronous=NORMAL (Ganglion's settings)"
	echo "- pgbench (20 clients, ${BENCH_PGBENCH_SECONDS:-10} s, single-row INSERT with a bigserial key): **$pgbench_tps inserts/s**"
	echo "- Sizes: $sizes${extra[*]:+; extra bench flags: ${extra[*]}}"
	echo "- Deployments: monolith = one \`ganglion serve\`; fleet = examples/fleet under \`ganglion up\` (main, 2 client workers, 2 event persisters, 1 stream writer, the router): every request through the router; fleet-direct = the same fleet with the clients spread over the two workers, bypassing the router"
	echo "- Figures: rate over the measured phase (setup excluded); latencies in ms from exact sorted samples;"
	echo "  peak RSS is the server's VmHWM, reset at each scenario's start"
	echo
	"$tmp/bench" -report "$(IFS=,; echo "${results[*]}")" -pgbench-tps "$pgbench_tps"
	# The written analysis (reasons for unmet targets, next bottlenecks)
	# lives in bench/ANALYSIS.md, so a rerun keeps it.
	if [[ -f "$root/bench/ANALYSIS.md" ]]; then
		echo
		cat "$root/bench/ANALYSIS.md"
	fi
} >"$out.tmp"
mv "$out.tmp" "$out"
log "wrote $out"
if [[ ${#failed[@]} -gt 0 ]]; then
	die "errors in: ${failed[*]}"
fi
