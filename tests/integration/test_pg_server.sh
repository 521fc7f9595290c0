#!/bin/bash
# tests/support/pg_server.sh, the throw-away PostgreSQL server of the
# PostgreSQL test run: start, create a database (twice), connect with psql,
# the refusal of a second start in the same directory, stop, a durable start.
set -uo pipefail

src=${COFFER_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
pg=$src/tests/support/pg_server.sh
fails=0

dir=$(mktemp -d /tmp/coffer-pgtest.XXXXXX)
chmod 0755 "$dir"
trap '"$pg" stop "$dir/srv" >/dev/null 2>&1; rm -rf "$dir"' EXIT

ok() { echo "ok   $*"; }
fail() {
	echo "FAIL $*"
	fails=$((fails + 1))
}
# expect NAME WANT GOT
expect() {
	if [ "$3" = "$2" ]; then ok "$1"; else fail "$1: expected \"$2\", got \"$3\""; fi
}
# contains NAME NEEDLE TEXT
contains() {
	case "$3" in
	*"$2"*) ok "$1" ;;
	*) fail "$1: \"$2\" not in: $3" ;;
	esac
}
q() { psql -X -At -h "$dir/srv/sock" -d "$1" -c "$2" 2>&1; }

sock=$("$pg" start "$dir/srv")
expect "start prints the socket directory" "$dir/srv/sock" "$sock"
[ -S "$sock/.s.PGSQL.5432" ] && ok "the socket exists" || fail "no socket in $sock"
expect "no TCP listener" "" "$(q postgres 'SHOW listen_addresses')"
expect "fast by default: fsync off" "off" "$(q postgres 'SHOW fsync')"

"$pg" createdb "$dir/srv" coffer_0123456789abcdef && ok "createdb" || fail "createdb"
"$pg" createdb "$dir/srv" coffer_0123456789abcdef && ok "createdb again (exists)" ||
	fail "createdb of an existing database failed"
expect "psql connects to it" "coffer_0123456789abcdef|1" \
	"$(q coffer_0123456789abcdef 'SELECT current_database(), 1')"
err=$("$pg" createdb "$dir/srv" "x; DROP DATABASE postgres" 2>&1) &&
	fail "createdb accepted a name that is not an identifier"
contains "createdb refuses a name that is not an identifier" 'is not [a-z_][a-z0-9_]{0,62}' "$err"

err=$("$pg" start "$dir/srv" 2>&1)
rc=$?
expect "a second start in the same directory fails" 1 "$rc"
contains "and says why" "a PostgreSQL server already runs in $dir/srv (socket directory $dir/srv/sock); stop it first: pg_server.sh stop $dir/srv" "$err"
expect "the first server still answers" "1" "$(q postgres 'SELECT 1')"

"$pg" stop "$dir/srv" && ok "stop" || fail "stop"
"$pg" status "$dir/srv" && fail "status says running after stop" || ok "status: stopped"
err=$("$pg" stop "$dir/srv" 2>&1) && ok "stop when stopped exits 0" || fail "stop when stopped failed"
contains "and says so" "no PostgreSQL server runs in $dir/srv" "$err"
err=$("$pg" createdb "$dir/srv" coffer_x 2>&1) && fail "createdb without a server succeeded"
contains "createdb without a server says so" "no PostgreSQL server runs in $dir/srv" "$err"

sock=$("$pg" start "$dir/srv" --durable)
expect "durable restart, same directory" "$dir/srv/sock" "$sock"
expect "durable: fsync, synchronous_commit, full_page_writes on" "on|on|on" \
	"$(q postgres "SELECT current_setting('fsync'), current_setting('synchronous_commit'), current_setting('full_page_writes')")"
expect "the database survived the restart" "1" "$(q coffer_0123456789abcdef 'SELECT 1')"
"$pg" stop "$dir/srv" && ok "stop" || fail "stop"

err=$("$pg" start "$dir/$(printf 'd%.0s' {1..90})" 2>&1) && fail "a socket path over 107 bytes was accepted"
contains "a socket path over 107 bytes is refused" "is longer than 107 bytes: choose a shorter DIR" "$err"

if [ "$fails" -ne 0 ]; then
	echo "$fails check(s) failed"
	exit 1
fi
echo "all checks passed"
