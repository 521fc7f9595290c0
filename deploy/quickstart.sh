#!/bin/bash
# Coffer quick start on a fresh Debian 12 machine. From the repository root:
#     bash deploy/quickstart.sh
# 1. installs the Debian packages (deploy/install-deps.sh) and builds ./build
# 2. initialises a SoftHSM2 token in ./demo (deploy/init-token.sh)
# 3. starts cofferd on it, with its sockets and registry in ./demo
# 4. makes you a principal allowed to use the demo-* keys
# 5. creates an ECDSA P-256 key, signs a file with cofferctl, and verifies the
#    signature with the openssl command-line tool on the exported public key.
# 6. pins the daemon's identity and wraps/unwraps a secret in a sealed session
# 7. gives your principal an API key: from then on every call is signed
# The daemon keeps running afterwards; stop it with: kill "$(cat demo/cofferd.pid)"
# Safe to re-run: the token, the key and the registry are kept.
# With the Debian packages installed (README "Packages"), the same with their
# binaries, nothing built:  COFFER_PREFIX=/usr bash deploy/quickstart.sh
# (COFFER_DEMO_DIR: another directory than ./demo).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)

prefix=${COFFER_PREFIX:-}
if [ -n "$prefix" ]; then
    echo "== 1. packaged binaries in $prefix"
    cofferd=$prefix/sbin/cofferd ctl=$prefix/bin/cofferctl
    init_token=$prefix/share/cofferd/init-token.sh
else
    echo "== 1. dependencies and build"
    bash deploy/install-deps.sh
    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build build -j"$(nproc)"
    cofferd=build/daemon/cofferd ctl=build/cofferctl init_token=deploy/init-token.sh
fi

demo=${COFFER_DEMO_DIR:-$root/demo}
echo "== 2. SoftHSM2 token in $demo"
COFFERD=$cofferd sh "$init_token" "$demo" coffer
export SOFTHSM2_CONF=$demo/softhsm2.conf
# Unix socket paths are limited to 107 bytes.
run=$demo
if [ ${#run} -gt 80 ]; then run=$(mktemp -d /tmp/coffer-demo.XXXXXX); fi
export COFFER_SOCKET=$run/service.sock COFFER_ADMIN_SOCKET=$run/admin.sock

echo "== 3. cofferd"
# The demo's earlier daemon, stopped: only if the pid file still names a
# cofferd (after a reboot it may be anyone's process), and at most 10 s.
old=$(cat "$demo/cofferd.pid" 2>/dev/null || true)
case $old in ''|*[!0-9]*) old= ;; esac
if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
    exe=$(readlink "/proc/$old/exe" 2>/dev/null || true)
    exe=${exe%" (deleted)"}
    if [ "${exe##*/}" = cofferd ]; then
        kill "$old"
        for _ in $(seq 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$old" 2>/dev/null; then
            echo "the demo's earlier cofferd (pid $old) did not stop within 10 s" >&2
            exit 1
        fi
    else
        echo "note: $demo/cofferd.pid names pid $old, which is not a cofferd: left alone" >&2
    fi
fi
: >"$demo/cofferd.log"
"$cofferd" --token-uri pkcs11:token=coffer --pin-file "$demo/user.pin" \
    --state-dir "$demo/state" --service-socket "$COFFER_SOCKET" \
    --admin-socket "$COFFER_ADMIN_SOCKET" </dev/null >>"$demo/cofferd.log" 2>&1 &
echo $! >"$demo/cofferd.pid"
for _ in $(seq 100); do
    grep -q "ready:" "$demo/cofferd.log" && break
    kill -0 "$(cat "$demo/cofferd.pid")" 2>/dev/null || { cat "$demo/cofferd.log"; exit 1; }
    sleep 0.1
done
grep "ready:" "$demo/cofferd.log"

echo "== 4. a principal for you: cofferd serves only callers it knows (deny by default)"
if ! "$ctl" principal show demo >/dev/null 2>&1; then
    "$ctl" principal create demo --uid "$(id -u)" >/dev/null
fi
"$ctl" principal grant demo --key 'demo-*' --op all
# A re-run: the principal already has an API key (step 7), so sign with it.
if [ -f "$demo/demo.key" ]; then
    export COFFER_API_KEY_FILE=$demo/demo.key
fi

echo "== 5. sign a file, verify with openssl"
if ! "$ctl" key show demo-signing >/dev/null 2>&1; then
    "$ctl" key create demo-signing --type ec-p256
fi
"$ctl" key show demo-signing
echo "Coffer demo message, $(date -u)" >"$demo/message.txt"
"$ctl" sign demo-signing --in "$demo/message.txt" --out "$demo/message.sig"
"$ctl" key pubkey demo-signing --out "$demo/demo-signing.pem"
openssl dgst -sha256 -verify "$demo/demo-signing.pem" -signature "$demo/message.sig" \
    "$demo/message.txt"

echo "== 6. sealed session: pin the daemon's identity, wrap and unwrap a secret"
"$ctl" identity --out "$demo/identity.pem"
export COFFER_IDENTITY=$demo/identity.pem
if ! "$ctl" key show demo-wrapping >/dev/null 2>&1; then
    "$ctl" key create demo-wrapping --type aes-256 >/dev/null
fi
printf 'demo secret %s' "$(date -u +%s)" >"$demo/secret.txt"
"$ctl" wrap demo-wrapping --context app=demo --in "$demo/secret.txt" --out "$demo/secret.wrapped"
"$ctl" unwrap demo-wrapping --context app=demo --in "$demo/secret.wrapped" --out "$demo/secret.out"
cmp "$demo/secret.txt" "$demo/secret.out" && echo "unwrapped through a sealed session: identical"
rm -f "$demo/secret.txt" "$demo/secret.out"

echo "== 7. an API key: every call of the principal is then signed (HMAC in the token)"
if [ ! -f "$demo/demo.key" ]; then
    "$ctl" principal add-key demo --out "$demo/demo.key"
fi
if COFFER_API_KEY_FILE= "$ctl" key show demo-signing >/dev/null 2>"$demo/unsigned.err"; then
    echo "an unsigned call was accepted" >&2
    exit 1
fi
echo "unsigned: $(cat "$demo/unsigned.err")"
export COFFER_API_KEY_FILE=$demo/demo.key
"$ctl" sign demo-signing --in "$demo/message.txt" --out "$demo/message.sig"
echo "signed call with $demo/demo.key: OK"

cat <<MSG

cofferd is running (pid $(cat "$demo/cofferd.pid"), log $demo/cofferd.log).
Try:  export SOFTHSM2_CONF=$SOFTHSM2_CONF COFFER_SOCKET=$COFFER_SOCKET COFFER_ADMIN_SOCKET=$COFFER_ADMIN_SOCKET COFFER_IDENTITY=$COFFER_IDENTITY COFFER_API_KEY_FILE=$COFFER_API_KEY_FILE
      "$ctl" key list
Stop: kill \$(cat $demo/cofferd.pid)
Tests: ctest --test-dir build --output-on-failure
MSG
