#!/bin/sh
# init-tpm-token.sh DIR [LABEL] — a TPM 2.0 token for cofferd, on a software
# TPM (swtpm), for development and CI.
#
#   init-tpm-token.sh DIR [LABEL]   start (or restart) everything, create the token if absent
#   init-tpm-token.sh --stop DIR    stop the processes started for DIR (the state stays)
#   init-tpm-token.sh --stop-swtpm DIR / --start-swtpm DIR
#                                   stop / start swtpm, on the same ports and state (a TPM
#                                   that goes away and comes back); --start-swtpm also
#                                   restarts tpm2-abrmd, which does not follow a TPM reset
#                                   (measured: now and then it goes on believing the TPM's
#                                   3 object slots are free, and every command fails with
#                                   "out of memory for object contexts")
#
# Starts, each with a pid file in DIR:
#   swtpm         socket mode on 127.0.0.1, two free ports (data P, control P+1),
#                 its state in DIR/tpmstate
#   dbus-daemon   a private session bus at DIR/bus (tpm2-abrmd talks D-Bus)
#   tpm2-abrmd    the resource manager: swtpm holds 3 transient objects, and
#                 tpm2-pkcs11 fails at the second key without one
# Creates (only what is missing):
#   DIR/store/    the tpm2-pkcs11 store (primary object, token, key blobs)
#   DIR/user.pin, DIR/so.pin   random PINs (0600)
#   DIR/env       the environment a process using the module needs (sh syntax)
# and sets the TPM's dictionary-lockout parameters for tests (1000 tries,
# 1 s recovery: swtpm's default locks for 1000 s after 3 wrong PINs).
#
# tpm2_ptool reads the PINs from its command line only: they are in its argv
# for the moment it runs. This is a development token; do not keep secrets in it.
#
# DIR's path may hold only A-Z a-z 0-9 / . _ - : it goes into swtpm's
# comma-separated options, a D-Bus address and DIR/env, whose values are
# written unquoted (tests read that file literally). A pid file is trusted
# only while its process runs the program it stands for (/proc/PID/exe):
# a stale one whose pid now belongs to another process is refused, not
# killed.
#
# Environment: SWTPM, TPM2_ABRMD, DBUS_DAEMON, TPM2_PTOOL, OPENSSL override the
# programs; TPM2_PKCS11_MODULE the module path.
set -eu

prog=$(basename "$0")
die() { echo "$prog: $*" >&2; exit 1; }
usage() {
    echo "usage: $prog DIR [LABEL] | --stop DIR | --stop-swtpm DIR | --start-swtpm DIR" >&2
    exit 2
}

mode=init
case ${1:-} in
    --stop) mode=stop; shift ;;
    --stop-swtpm) mode=stop-swtpm; shift ;;
    --start-swtpm) mode=start-swtpm; shift ;;
    -h|--help|'') usage ;;
esac
[ $# -ge 1 ] || usage
if [ "$mode" = init ]; then [ $# -le 2 ] || usage; else [ $# -eq 1 ] || usage; fi
label=${2:-coffer}
case $label in
    ''|*[!A-Za-z0-9._-]*) die "label must be 1-32 characters of A-Z a-z 0-9 . _ -" ;;
esac
[ "${#label}" -le 32 ] || die "label must be 1-32 characters of A-Z a-z 0-9 . _ -"

SWTPM=${SWTPM:-swtpm}
TPM2_ABRMD=${TPM2_ABRMD:-tpm2-abrmd}
DBUS_DAEMON=${DBUS_DAEMON:-dbus-daemon}
TPM2_PTOOL=${TPM2_PTOOL:-tpm2_ptool}
OPENSSL=${OPENSSL:-openssl}

# Pid file $1 names a live process (its pid in $pid): a number, nothing else.
running() {
    [ -f "$1" ] && pid=$(cat "$1") || return 1
    case $pid in ''|*[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null
}

# Process $pid runs program $1 (a name looked up in PATH, or a path): the
# same file, or one of the same name (a package upgrade replaced it). Its
# program, as far as it can be read, in $exe.
runs() {
    want=$(command -v "$1" 2>/dev/null) && want=$(readlink -f "$want") || want=$1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || exe=
    exe=${exe%" (deleted)"}
    [ -n "$exe" ] && { [ "$exe" = "$want" ] || [ "${exe##*/}" = "${want##*/}" ]; }
}

# Pid file $1 names a live process of program $2.
alive() { running "$1" && runs "$2"; }

# Stop the process of pid file $1, which must run program $2, and wait (at
# most 5 s) for it to go; 1, saying why, if the file names another program's
# process (left alone, and the file kept).
stop_pid() {
    if running "$1"; then
        if ! runs "$2"; then
            echo "$prog: $1 names pid $pid, which runs ${exe:-a program that cannot be read}," \
                "not ${2##*/}: not stopping it (remove $1 if it is stale)" >&2
            return 1
        fi
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

# Temporary files are made beside their target (mktemp) and removed if the
# script stops before renaming them.
tmp=
trap 'rm -f "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
newtmp() { tmp=$(mktemp "$dir/$1.XXXXXX") || die "cannot create a temporary file in $dir"; }

[ "$mode" = init ] && { mkdir -p "$1" || die "cannot create $1"; }
[ -d "$1" ] || die "$1 is not a directory"
dir=$(cd "$1" && pwd -P) || die "cannot enter $1"
case $dir in
    *[!A-Za-z0-9/._-]*) die "$dir: the path may hold only A-Z a-z 0-9 / . _ - (it goes into" \
        "swtpm's options and a D-Bus address)" ;;
esac

start_swtpm() {
    port=$(cat "$dir/port")
    case $port in ''|*[!0-9]*) die "$dir/port does not hold a port number" ;; esac
    "$SWTPM" socket --tpm2 --tpmstate dir="$dir/tpmstate" \
        --server type=tcp,port="$port",bindaddr=127.0.0.1 \
        --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
        --flags not-need-init,startup-clear --daemon --pid file="$dir/swtpm.pid" \
        --log file="$dir/swtpm.log" || die "swtpm did not start (see $dir/swtpm.log)"
}

bus="unix:path=$dir/bus"
start_abrmd() {
    DBUS_SESSION_BUS_ADDRESS="$bus" "$TPM2_ABRMD" --session --allow-root --flush-all \
        --tcti="swtpm:host=127.0.0.1,port=$(cat "$dir/port")" >"$dir/abrmd.log" 2>&1 &
    echo $! >"$dir/abrmd.pid"
    # Ready when it answers on the bus.
    i=0
    until DBUS_SESSION_BUS_ADDRESS="$bus" TPM2TOOLS_TCTI=tabrmd:bus_type=session \
            tpm2_getcap properties-fixed >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -lt 100 ] || die "tpm2-abrmd does not answer (see $dir/abrmd.log)"
        # Alive is enough: just forked, it may not have become tpm2-abrmd yet.
        running "$dir/abrmd.pid" || die "tpm2-abrmd exited (see $dir/abrmd.log)"
        sleep 0.1
    done
}

case $mode in
    stop)
        ok=0
        stop_pid "$dir/abrmd.pid" "$TPM2_ABRMD" || ok=1
        stop_pid "$dir/dbus.pid" "$DBUS_DAEMON" || ok=1
        stop_pid "$dir/swtpm.pid" "$SWTPM" || ok=1
        [ "$ok" -eq 0 ] || die "some of the TPM token processes of $dir were not stopped"
        echo "$prog: stopped the TPM token processes of $dir" >&2
        exit 0 ;;
    stop-swtpm)
        stop_pid "$dir/swtpm.pid" "$SWTPM" || exit 1
        exit 0 ;;
    start-swtpm)
        [ -f "$dir/port" ] || die "$dir has no TPM (run $prog $dir first)"
        alive "$dir/swtpm.pid" "$SWTPM" || start_swtpm
        if alive "$dir/abrmd.pid" "$TPM2_ABRMD"; then
            stop_pid "$dir/abrmd.pid" "$TPM2_ABRMD" || exit 1
            start_abrmd
        fi
        exit 0 ;;
esac

for p in "$SWTPM" "$TPM2_ABRMD" "$DBUS_DAEMON" "$TPM2_PTOOL" tpm2_dictionarylockout \
         "$OPENSSL" python3; do
    command -v "$p" >/dev/null 2>&1 ||
        die "$p not found (deploy/install-deps.sh installs swtpm, tpm2-abrmd, tpm2-tools, libtpm2-pkcs11-tools)"
done
module=${TPM2_PKCS11_MODULE:-}
if [ -z "$module" ]; then
    for m in /usr/lib/*/pkcs11/libtpm2_pkcs11.so /usr/lib/pkcs11/libtpm2_pkcs11.so; do
        [ -f "$m" ] && { module=$m; break; }
    done
fi
[ -n "$module" ] && [ -f "$module" ] || die "libtpm2_pkcs11.so not found (apt-get install libtpm2-pkcs11-1)"

umask 077
mkdir -p "$dir/tpmstate" "$dir/store"

# Two free consecutive ports, chosen once and kept: the store does not
# depend on them, but a restarted swtpm must come back where abrmd looks.
if [ ! -f "$dir/port" ]; then
    newtmp port
    python3 - >"$tmp" <<'EOF' || die "no free pair of TCP ports on 127.0.0.1"
import random, socket
for _ in range(200):
    p = random.randrange(20000, 60000, 2)
    try:
        ss = [socket.socket() for _ in (0, 1)]
        for i, s in enumerate(ss):
            s.bind(("127.0.0.1", p + i))
        for s in ss:
            s.close()
        print(p)
        break
    except OSError:
        for s in ss:
            s.close()
else:
    raise SystemExit(1)
EOF
    mv "$tmp" "$dir/port"
    tmp=
fi

alive "$dir/swtpm.pid" "$SWTPM" || start_swtpm

if ! alive "$dir/dbus.pid" "$DBUS_DAEMON"; then
    rm -f "$dir/bus"
    "$DBUS_DAEMON" --session --address="$bus" --fork --print-pid >"$dir/dbus.pid" ||
        die "dbus-daemon did not start"
fi
DBUS_SESSION_BUS_ADDRESS=$bus
TPM2_PKCS11_TCTI=tabrmd:bus_type=session
TPM2TOOLS_TCTI=$TPM2_PKCS11_TCTI
TPM2_PKCS11_STORE=$dir/store
export DBUS_SESSION_BUS_ADDRESS TPM2_PKCS11_TCTI TPM2TOOLS_TCTI TPM2_PKCS11_STORE

alive "$dir/abrmd.pid" "$TPM2_ABRMD" || start_abrmd

tpm2_dictionarylockout --clear-lockout >/dev/null 2>&1 ||
    die "tpm2_dictionarylockout --clear-lockout failed"
tpm2_dictionarylockout --setup-parameters --max-tries=1000 --recovery-time=1 \
    --lockout-recovery-time=1 >/dev/null 2>&1 ||
    die "tpm2_dictionarylockout --setup-parameters failed"

newtmp env
cat >"$tmp" <<EOF
DBUS_SESSION_BUS_ADDRESS=$bus; export DBUS_SESSION_BUS_ADDRESS
TPM2_PKCS11_TCTI=$TPM2_PKCS11_TCTI; export TPM2_PKCS11_TCTI
TPM2TOOLS_TCTI=$TPM2TOOLS_TCTI; export TPM2TOOLS_TCTI
TPM2_PKCS11_STORE=$dir/store; export TPM2_PKCS11_STORE
TPM2_PKCS11_LOG_LEVEL=0; export TPM2_PKCS11_LOG_LEVEL
EOF
chmod 0644 "$tmp"
mv "$tmp" "$dir/env"
tmp=

summary() {
    echo "module:        $module"
    echo "token URI:     pkcs11:token=$label"
    echo "user PIN file: $dir/user.pin"
    echo "environment:   . $dir/env"
    echo "run:           . '$dir/env' && cofferd --module '$module' --token-uri" \
        "pkcs11:token=$label --pin-file '$dir/user.pin'"
    echo "stop:          '$0' --stop '$dir'"
}

# The label compared as a string ("label: NAME" lines; YAML may quote it).
if "$TPM2_PTOOL" listtokens --pid=1 --path="$dir/store" 2>/dev/null | label=$label awk '
        $1 == "label:" { v = $2; if (v ~ /^\047.*\047$/) v = substr(v, 2, length(v) - 2)
                         if (v == ENVIRON["label"]) found = 1 }
        END { exit !found }'; then
    echo "$prog: a token labelled \"$label\" already exists in $dir/store" >&2
    summary
    exit 0
fi
for f in "$dir/user.pin" "$dir/so.pin"; do
    [ ! -e "$f" ] || die "$f exists but no token \"$label\" does; move it away first"
done
# The store's primary first: a failure there leaves no PIN file behind
# (a re-run would refuse to overwrite it).
if ! "$TPM2_PTOOL" listprimaries --path="$dir/store" 2>/dev/null | grep -q id; then
    "$TPM2_PTOOL" init --path="$dir/store" >/dev/null || die "tpm2_ptool init failed"
fi
upin=$("$OPENSSL" rand -hex 16) || die "openssl rand failed"
spin=$("$OPENSSL" rand -hex 16) || die "openssl rand failed"
# Until the token exists, a run cut short (an error, a signal) removes them.
pins_pending=1
trap 'rm -f "$tmp"; [ "$pins_pending" = 0 ] || rm -f "$dir/user.pin" "$dir/so.pin"' EXIT
for f in user so; do
    newtmp "$f.pin"
    if [ "$f" = user ]; then pin=$upin; else pin=$spin; fi
    printf '%s\n' "$pin" >"$tmp"
    chmod 0600 "$tmp"
    mv "$tmp" "$dir/$f.pin"
    tmp=
done
unset pin

if ! out=$("$TPM2_PTOOL" addtoken --pid=1 --label="$label" --userpin="$upin" \
        --sopin="$spin" --path="$dir/store" 2>&1); then
    unset upin spin
    printf '%s\n' "$out" | grep -v -i pin >&2 || true
    die "tpm2_ptool addtoken failed"
fi
pins_pending=0
unset upin spin
echo "$prog: created TPM token \"$label\" in $dir/store" >&2
summary
