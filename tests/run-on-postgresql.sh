#!/bin/bash
# The test suite of a build tree on the PostgreSQL state backend:
#
#   tests/run-on-postgresql.sh BUILD_DIR [ctest arguments...]
#   e.g. tests/run-on-postgresql.sh build --output-on-failure -R test_lifecycle
#
# Starts a throw-away PostgreSQL server (tests/support/pg_server.sh, fast
# settings) in a temporary directory, runs ctest --test-dir BUILD_DIR with
# COFFER_TEST_BACKEND=postgresql and COFFER_TEST_PG_HOST=<its socket dir> (every
# daemon fixture then gets its own database on it), stops and removes the
# server, lists the checks the run skipped because they only exist for the
# SQLite file ("SKIP (postgresql): ..."), and exits with ctest's status.
# The same build tree serves both backends: nothing to reconfigure.
# COFFER_KEEP_TMP=1 keeps the server's directory (and log) for a post-mortem.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ] || [ ! -f "$1/CTestTestfile.cmake" ]; then
	echo "usage: ${0##*/} BUILD_DIR [ctest arguments...] (BUILD_DIR: a configured build tree)" >&2
	exit 2
fi
build=$(cd "$1" && pwd)
shift

# Under /tmp: the server user (postgres, when run as root) must reach it.
pgdir=$(mktemp -d /tmp/coffer-pg.XXXXXX) || exit 1
chmod 0755 "$pgdir"
cleanup() {
	"$here/support/pg_server.sh" stop "$pgdir" >/dev/null 2>&1
	if [ "${COFFER_KEEP_TMP:-0}" = 0 ]; then
		rm -rf "$pgdir"
	else
		echo "run-on-postgresql: kept $pgdir (server log: $pgdir/log/server.log)"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sock=$("$here/support/pg_server.sh" start "$pgdir") || exit 1
echo "run-on-postgresql: PostgreSQL on $sock"

COFFER_TEST_BACKEND=postgresql COFFER_TEST_PG_HOST=$sock ctest --test-dir "$build" "$@"
rc=$?

# A run in which no daemon fixture made its database did not test PostgreSQL.
made=$(grep -c 'statement: CREATE DATABASE' "$pgdir/log/server.log" 2>/dev/null)
echo "run-on-postgresql: ${made:-0} daemon database(s) made on PostgreSQL"
selected=0
for a in "$@"; do
	case "$a" in -R | -I | -L | --tests-regex | --label-regex | --tests-information) selected=1 ;; esac
done
if [ "${made:-0}" -eq 0 ] && [ "$selected" -eq 0 ] && [ "$rc" -eq 0 ]; then
	echo "run-on-postgresql: the whole suite ran and no daemon used PostgreSQL:" \
		"COFFER_TEST_BACKEND is not reaching the fixtures" >&2
	rc=1
fi

# What did not run on PostgreSQL, and why (the tests print it).
log=$build/Testing/Temporary/LastTest.log
if [ -f "$log" ]; then
	skips=$(grep -o 'SKIP (postgresql): .*' "$log" | sort | uniq -c)
	if [ -n "$skips" ]; then
		echo "run-on-postgresql: checks skipped on PostgreSQL (SQLite-file specific):"
		echo "$skips"
	fi
fi
exit "$rc"
