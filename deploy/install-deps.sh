#!/bin/sh
# Installs every Debian 12 package Coffer needs to build, run and test.
# Safe to run twice: apt-get install is idempotent and the update is skipped
# when every package is already present.
set -eu

PKGS="build-essential cmake pkg-config git ca-certificates
 libssl-dev openssl
 softhsm2 libsofthsm2 p11-kit libp11-kit-dev
 libp11-dev libengine-pkcs11-openssl
 swtpm swtpm-tools tpm2-tools libtpm2-pkcs11-1 libtpm2-pkcs11-tools
 libtss2-tcti-swtpm0 tpm2-abrmd libtss2-tcti-tabrmd0 dbus
 libprotobuf-c-dev protobuf-c-compiler
 libgrpc-dev protobuf-compiler-grpc
 libcunit1-dev libsqlite3-dev sqlite3 libmicrohttpd-dev libsystemd-dev
 postgresql libpq-dev
 python3 python3-grpcio python3-grpc-tools python3-cryptography python3-prometheus-client
 clang libclang-rt-14-dev
 systemd lintian dpkg-dev file adduser"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
echo "install-deps: installed$missing"
