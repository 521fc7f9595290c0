#!/bin/bash
# A throw-away PostgreSQL server for tests and benchmarks, on a Unix socket
# only (no TCP), in a directory of its own.
#
#   pg_server.sh start DIR [--durable]   initdb (first time) and start; prints
#                                        the socket directory (DIR/sock), the
#                                        libpq host= of every client
#   pg_server.sh stop DIR [--immediate]  fast shutdown (nothing to stop: says so, exit 0);
#                                        --immediate: as a crash (recovery at the next start)
#   pg_server.sh createdb DIR NAME       CREATE DATABASE NAME unless it exists
#   pg_server.sh status DIR              exit 0 if a server runs in DIR
#
# Fast by default (fsync and full_page_writes off): fine for tests, wrong for
# timing commits. synchronous_commit stays on even then: a commit is in the
# kernel before it returns, so a crash of the server (stop --immediate) keeps
# it, as the tests of crash behaviour expect; only the machine's crash would
# lose it. --durable starts it with fsync, full_page_writes and
# synchronous_commit on (what a benchmark must measure).
# The settings are per start: the same DIR can be restarted either way.
#
# PostgreSQL refuses to run as root: as root the server runs as $PG_USER
# (default postgres) through runuser, so DIR and every directory above it must
# be searchable by that user (a mktemp -d under /tmp made 0755 is). As any
# other user it runs as that user. Clients connect as the database superuser,
# named after the user who ran `start` (root in CI), with trust authentication
# on the socket (as root the socket directory is 0755, so that root's clients
# reach the server user's socket; otherwise 0700).
# Binaries: $PG_BINDIR, else the newest /usr/lib/postgresql/*/bin.
set -euo pipefail

me=${0##*/}
die() {
	echo "$me: $*" >&2
	exit 1
}

usage() {
	sed -n '4,11s/^# \{0,1\}//p' "$0" >&2
	exit 2
}

bindir() {
	if [ -n "${PG_BINDIR:-}" ]; then
		echo "$PG_BINDIR"
		return
	fi
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	[ -n "$d" ] && [ -x "$d/pg_ctl" ] ||
		die "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (install the" \
			"Debian package postgresql: deploy/install-deps.sh) or set PG_BINDIR"
	echo "$d"
}

# Run a server program as the server user.
as_server() {
	if [ "$(id -u)" -eq 0 ]; then
		(cd / && runuser -u "$server_user" -- "$@")
	else
		"$@"
	fi
}

setup() {
	[ $# -ge 1 ] && [ -n "$1" ] || usage
	dir=$(realpath -m -- "$1")
	data=$dir/data
	sock=$dir/sock
	log=$dir/log/server.log
	bin=$(bindir)
	if [ "$(id -u)" -eq 0 ]; then
		server_user=${PG_USER:-postgres}
		id -u "$server_user" >/dev/null 2>&1 ||
			die "user $server_user does not exist (the postgresql package creates it; or set PG_USER)"
	else
		server_user=$(id -un)
	fi
	# libpq's limit on a socket path (sun_path) is 107 bytes.
	[ ${#sock} -le 90 ] || die "socket path $sock/.s.PGSQL.5432 is longer than 107 bytes:" \
		"choose a shorter DIR"
}

running() {
	[ -f "$data/PG_VERSION" ] && as_server "$bin/pg_ctl" status -D "$data" >/dev/null 2>&1
}

cmd_start() {
	local durable=0 opts
	setup "${1:-}"
	case "${2:-}" in
	"") ;;
	--durable) durable=1 ;;
	*) usage ;;
	esac
	if running; then
		die "a PostgreSQL server already runs in $dir (socket directory $sock);" \
			"stop it first: $me stop $dir"
	fi
	mkdir -p "$dir"
	chmod 0755 "$dir"
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$server_user" -- test -x "$dir" ||
			die "user $server_user cannot reach $dir (a directory above it is not" \
				"searchable by other users): choose a DIR under /tmp"
		mkdir -p "$data" "$sock" "$dir/log"
		chown "$server_user:" "$data" "$sock" "$dir/log"
		chmod 0700 "$data"
		chmod 0755 "$sock"
	else
		mkdir -p "$data" "$sock" "$dir/log"
		chmod 0700 "$data" "$sock"
	fi
	if [ ! -f "$data/PG_VERSION" ]; then
		# The superuser is named after whoever runs the clients: root in CI.
		as_server "$bin/initdb" -D "$data" -U "$(id -un)" --auth=trust --no-locale \
			-E UTF8 --no-sync >"$dir/log/initdb.log" 2>&1 ||
			die "initdb failed; its output: $dir/log/initdb.log:
$(tail -n 20 "$dir/log/initdb.log")"
	fi
	if [ "$durable" -eq 1 ]; then
		opts="-c fsync=on -c full_page_writes=on -c synchronous_commit=on"
	else
		opts="-c fsync=off -c full_page_writes=off -c synchronous_commit=on"
	fi
	# Tests open a database per daemon fixture, several at a time.
	opts="$opts -c listen_addresses='' -c unix_socket_directories='$sock'"
	# DDL in the log: tests/run-on-postgresql.sh counts the databases made.
	opts="$opts -c max_connections=200 -c log_statement=ddl"
	# COFFER_PG_OPTS: more server options, e.g. to profile a benchmark's
	# statements (-c shared_preload_libraries=pg_stat_statements).
	opts="$opts ${COFFER_PG_OPTS:-}"
	if ! as_server "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 -o "$opts" start \
		>/dev/null 2>"$dir/log/pg_ctl.err"; then
		die "the PostgreSQL server in $dir did not start:
$(cat "$dir/log/pg_ctl.err")
$(tail -n 20 "$log" 2>/dev/null)"
	fi
	echo "$sock"
}

cmd_stop() {
	local mode=fast
	setup "${1:-}"
	case "${2:-}" in
	"") ;;
	--immediate) mode=immediate ;;   # no checkpoint: the next start recovers, as after a crash
	*) usage ;;
	esac
	if ! running; then
		echo "$me: no PostgreSQL server runs in $dir" >&2
		return 0
	fi
	as_server "$bin/pg_ctl" -D "$data" -m $mode -w -t 60 stop >/dev/null ||
		die "the PostgreSQL server in $dir did not stop; its log: $log"
}

cmd_createdb() {
	setup "${1:-}"
	local name=${2:-} err
	[ -n "$name" ] || usage
	[[ $name =~ ^[a-z_][a-z0-9_]{0,62}$ ]] ||
		die "database name \"$name\" is not [a-z_][a-z0-9_]{0,62}"
	running || die "no PostgreSQL server runs in $dir: $me start $dir"
	# Two creators of the same name can race: "already exists" is success.
	if ! err=$(psql -X -q -h "$sock" -d postgres -v ON_ERROR_STOP=1 \
		-c "CREATE DATABASE $name" 2>&1 >/dev/null); then
		case "$err" in
		*"already exists"*) ;;
		*) die "CREATE DATABASE $name failed: $err" ;;
		esac
	fi
}

cmd_status() {
	setup "${1:-}"
	running
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
createdb) cmd_createdb "$@" ;;
status) cmd_status "$@" ;;
*) usage ;;
esac
