#!/bin/bash
# A Coffer fleet on one machine, for a look at what sharing a PostgreSQL state
# means (daemon/FLEET.md). From the repository root, after a build (./build):
#     bash deploy/fleet-demo.sh
# 1. starts a throw-away PostgreSQL server (tests/support/pg_server.sh; as root
#    the server runs as the user postgres) and creates the fleet's database
# 2. initialises one SoftHSM2 token (deploy/init-token.sh) that every replica uses
# 3. starts three cofferd replicas, r1, r2 and r3, each with its own sockets and
#    state directory, all on `[state] backend = postgresql` and one database,
#    with `[token] lock_file` in the token directory
# 4. through r1 only: a principal for you and an HMAC-SHA256 key
# 5. shows that r2 and r3 see the key (the time it took: a NOTIFY from r1)
# 6. signs an HTTP request once, through r1 (cofferctl request sign)
# 7. verifies it through r2 (valid), then replays it to r3 (refused: replayed)
# 8. checks each replica's own audit trail, and counts the PostgreSQL connections
# Everything runs in a temporary directory and is stopped and removed at the
# end (KEEP=1 keeps the directory, with the logs). Needs the Debian packages of
# deploy/install-deps.sh (postgresql, softhsm2). BUILD=DIR: another build dir.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
build=$(cd "${BUILD:-build}" 2>/dev/null && pwd -P) || build=
cofferd=$build/daemon/cofferd
ctl=$build/cofferctl
if [ -z "$build" ] || [ ! -x "$cofferd" ] || [ ! -x "$ctl" ]; then
    echo "fleet-demo: no cofferd and cofferctl in ${BUILD:-build}; build first:" >&2
    echo "    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build" >&2
    exit 1
fi

# Short paths (Unix socket paths are limited to 107 bytes), and a directory the
# server user can reach when we run as root.
demo=$(mktemp -d /tmp/coffer-fleet.XXXXXX)
chmod 0755 "$demo"
pids=()
cleanup() {
    local rc=$? pid
    echo "== stopping the replicas and PostgreSQL"
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    bash "$root/tests/support/pg_server.sh" stop "$demo/pg" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "kept $demo (logs: $demo/r?/cofferd.log, $demo/pg/log/server.log)"
    else
        rm -rf "$demo"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== 1. PostgreSQL (throw-away, Unix socket only, durable settings)"
pg_host=$(bash tests/support/pg_server.sh start "$demo/pg" --durable)
bash tests/support/pg_server.sh createdb "$demo/pg" coffer_fleet
# The connection string in a 0600 file, as a deployment keeps its password.
(umask 077 && printf 'host=%s dbname=coffer_fleet connect_timeout=5\n' "$pg_host" \
    >"$demo/state.dsn")
echo "server: host=$pg_host, database coffer_fleet"

echo "== 2. one SoftHSM2 token for the three replicas"
if ! out=$(COFFERD=$cofferd sh deploy/init-token.sh "$demo/hsm" coffer 2>&1); then
    echo "$out" >&2
    exit 1
fi
export SOFTHSM2_CONF=$demo/hsm/softhsm2.conf
echo "token: pkcs11:token=coffer in $demo/hsm/tokens"

echo "== 3. three cofferd replicas: r1, r2, r3"
for r in r1 r2 r3; do
    mkdir -m 0700 "$demo/$r"
    cat >"$demo/$r/cofferd.conf" <<EOF
[token]
uri = pkcs11:token=coffer
pin_file = $demo/hsm/user.pin
# The replicas share one token directory: serialise its object writes.
lock_file = $demo/hsm/tokens/coffer.lock

[daemon]
state_dir = $demo/$r/state

[state]
backend = postgresql
dsn_file = $demo/state.dsn
replica = $r

[service]
path = $demo/$r/service.sock

[admin]
path = $demo/$r/admin.sock
EOF
    "$cofferd" -c "$demo/$r/cofferd.conf" </dev/null >"$demo/$r/cofferd.log" 2>&1 &
    pids+=($!)
done
i=0
for r in r1 r2 r3; do
    for _ in $(seq 300); do
        grep -q "ready:" "$demo/$r/cofferd.log" && break
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            echo "fleet-demo: replica $r stopped; its log:" >&2
            cat "$demo/$r/cofferd.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if ! grep -q "ready:" "$demo/$r/cofferd.log"; then
        echo "fleet-demo: replica $r not ready after 30 s; its log:" >&2
        cat "$demo/$r/cofferd.log" >&2
        exit 1
    fi
    echo "$r (pid ${pids[$i]}): $(grep -m1 "ready:" "$demo/$r/cofferd.log" | sed 's/.*ready:/ready:/')"
    i=$((i + 1))
done

# cofferctl on replica $1: its service and admin sockets.
on() {
    local r=$1
    shift
    "$ctl" --socket "$demo/$r/service.sock" --admin-socket "$demo/$r/admin.sock" "$@"
}

# key show's name, type and primary version on one line.
brief() { grep -E '^(name|type|primary):' | tr -s ' ' | paste -sd ' '; }

echo "== 4. through r1: a principal for you (uid $(id -u)) and an HMAC-SHA256 key"
on r1 principal create demo --uid "$(id -u)" >/dev/null
on r1 principal grant demo --key 'orders-*' --op mac,verify-mac,get-public-key | grep -A1 grants:
on r1 key create orders-api --type hmac-sha256 | brief

echo "== 5. r2 and r3 see the key (r1's change reached them by NOTIFY)"
# Each replica serves from memory what the database holds; r1's commit is
# announced to the others, which re-read the key. Look until it is there.
for r in r2 r3; do
    looks=1
    start=$(date +%s%N)
    until out=$(on "$r" key show orders-api 2>&1); do
        if [ $looks -ge 200 ]; then
            echo "fleet-demo: $r does not see orders-api: $out" >&2
            exit 1
        fi
        looks=$((looks + 1))
        sleep 0.005
    done
    if [ $looks -eq 1 ]; then
        echo "$r: $(brief <<<"$out") (at the first look)"
    else
        echo "$r: $(brief <<<"$out") (after $looks looks," \
            "$(( ($(date +%s%N) - start) / 1000000 )) ms)"
    fi
done

echo "== 6. sign a request once, through r1"
printf '{"item":"book","amount":42}' >"$demo/order.json"
req=(orders-api --method POST --path /v1/orders --query 'b=2&a=1' --body "$demo/order.json")
signed=$(on r1 request sign "${req[@]}")
echo "$signed"
field() { sed -n "s/^$1: //p" <<<"$signed"; }
ts=$(field timestamp) nonce=$(field nonce) sig=$(field signature)
hdr=(--timestamp "$ts" --nonce "$nonce" --signature "$sig")

echo "== 7. verify it through r2, then replay it to r3"
# A failed command substitution in an assignment stops the script (set -e).
valid=$(on r2 request verify "${req[@]}" "${hdr[@]}")
echo "r2: $valid"
set +e
replay=$(on r3 request verify "${req[@]}" "${hdr[@]}")
rc=$?
set -e
echo "r3: $replay (exit $rc)"
if [ $rc -ne 1 ] || [[ $replay != "invalid: replayed:"* ]]; then
    echo "fleet-demo: the replay to r3 was not refused as replayed" >&2
    exit 1
fi

echo "== 8. each replica keeps its own audit trail (its state_dir), anchored in PostgreSQL"
for r in r1 r2 r3; do
    trail=$(on "$r" audit verify)
    echo "$r: $trail"
done
conns=$(psql -X -A -t -h "$pg_host" -d postgres \
    -c "SELECT count(*) FROM pg_stat_activity WHERE datname = 'coffer_fleet'")
echo "PostgreSQL: $conns connections to coffer_fleet from the three replicas"
echo "fleet-demo: OK: a request signed once was accepted by one replica and refused by another"
