#!/bin/sh
# init-token.sh DIR [LABEL] — initialise a SoftHSM2 token for cofferd in DIR.
#
# Creates (only what is missing):
#   DIR/tokens/          SoftHSM2 token directory (0700)
#   DIR/softhsm2.conf    SoftHSM2 configuration pointing at DIR/tokens
#   DIR/user.pin         random user PIN (0600): cofferd's [token] pin_file
#   DIR/so.pin           random security-officer PIN (0600)
# and initialises a token labelled LABEL (default "coffer") in a free slot.
#
# Safe to re-run: if a token with LABEL already exists in DIR it is left
# alone (exit 0). The PINs are never printed; they go only to the two files,
# and the token is initialised by `cofferd --init-token`, which reads them
# from those files: never on a command line, where every local user could
# read them (softhsm2-util takes PINs only there or from a terminal).
#
# For the systemd unit (deploy/cofferd.service), as root:
#   deploy/init-token.sh /var/lib/coffer
#   install -d -m 0750 -o root -g coffer /etc/coffer
#   install -m 0644 /var/lib/coffer/softhsm2.conf /etc/coffer/softhsm2.conf
#   install -m 0600 -o coffer -g coffer /var/lib/coffer/user.pin /etc/coffer/user.pin
#   rm /var/lib/coffer/user.pin
#   mv /var/lib/coffer/so.pin /root/coffer-so.pin    # then keep it offline
#   chown -R coffer:coffer /var/lib/coffer/tokens
# (cofferd refuses a PIN file that is not owned by its user or that others can
# read.) No PIN may stay in /var/lib/coffer: systemd gives the unit's state
# directory to its user, and a backup of it would hold the token with the PIN
# that opens it; the SO PIN can re-initialise (wipe) the token.
#
# Environment: COFFERD (default: cofferd on PATH, else the one installed or
# built beside this script), SOFTHSM2_MODULE (default: cofferd's own),
# SOFTHSM2_UTIL (default softhsm2-util; it only lists slots), OPENSSL
# (default openssl).
set -eu

prog=$(basename "$0")
die() { echo "$prog: $*" >&2; exit 1; }

if [ $# -lt 1 ] || [ $# -gt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    echo "usage: $prog DIR [LABEL]" >&2
    exit 2
fi
label=${2:-coffer}
# PKCS#11 labels are at most 32 bytes; keep them URI-safe so that
# pkcs11:token=LABEL needs no percent-encoding.
case $label in
    ''|*[!A-Za-z0-9._-]*) die "label must be 1-32 characters of A-Z a-z 0-9 . _ -" ;;
esac
[ ${#label} -le 32 ] || die "label must be 1-32 characters of A-Z a-z 0-9 . _ -"

SOFTHSM2_UTIL=${SOFTHSM2_UTIL:-softhsm2-util}
OPENSSL=${OPENSSL:-openssl}
command -v "$SOFTHSM2_UTIL" >/dev/null 2>&1 ||
    die "$SOFTHSM2_UTIL not found (apt-get install softhsm2)"
command -v "$OPENSSL" >/dev/null 2>&1 || die "$OPENSSL not found (apt-get install openssl)"
here=$(cd "$(dirname "$0")" && pwd -P)
if [ -z "${COFFERD:-}" ]; then
    for c in "$(command -v cofferd 2>/dev/null || true)" "$here/../../sbin/cofferd" \
             "$here/../build/daemon/cofferd"; do
        if [ -n "$c" ] && [ -x "$c" ]; then COFFERD=$c; break; fi
    done
fi
[ -n "${COFFERD:-}" ] && [ -x "$COFFERD" ] ||
    die "cofferd not found (it initialises the token): build it, install it, or set COFFERD"

umask 077
mkdir -p "$1" || die "cannot create $1"
dir=$(cd "$1" && pwd -P) || die "cannot enter $1"
conf=$dir/softhsm2.conf
tokens=$dir/tokens
user_pin=$dir/user.pin
so_pin=$dir/so.pin

mkdir -p "$tokens"
if [ ! -e "$conf" ]; then
    tmp=$(mktemp "$dir/.softhsm2.conf.XXXXXX")
    cat >"$tmp" <<EOF
# SoftHSM2 configuration written by $prog
directories.tokendir = $tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
    chmod 0644 "$tmp"
    mv "$tmp" "$conf"
elif ! grep -Eq "^[[:space:]]*directories\.tokendir[[:space:]]*=[[:space:]]*$tokens/?[[:space:]]*\$" "$conf"; then
    echo "$prog: note: keeping the existing $conf, whose tokendir is not $tokens" >&2
fi
SOFTHSM2_CONF=$conf
export SOFTHSM2_CONF

summary() {
    echo "export SOFTHSM2_CONF=$conf"
    echo "token URI:     pkcs11:token=$label"
    echo "user PIN file: $user_pin"
    echo "run:           SOFTHSM2_CONF=$conf cofferd --token-uri pkcs11:token=$label --pin-file $user_pin"
}

# Whether a token labelled $label exists: softhsm2-util prints "Label:
# <label>" padded with spaces for every slot.
has_token() {
    "$SOFTHSM2_UTIL" --show-slots 2>/dev/null | sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' |
        sed 's/[[:space:]]*$//' | grep -Fqx -- "$label"
}
"$SOFTHSM2_UTIL" --show-slots >/dev/null 2>&1 || die "softhsm2-util --show-slots failed (is $conf valid?)"
# cofferd --init-token with this token's PIN files; its output in $out.
run_init() {
    set -- --init-token "$label" --so-pin-file "$so_pin" --pin-file "$user_pin"
    [ -z "${SOFTHSM2_MODULE:-}" ] || set -- "$@" --module "$SOFTHSM2_MODULE"
    out=$("$COFFERD" "$@" 2>&1)
}
if has_token; then
    # A run killed between the token and its user PIN left a token that
    # cofferd cannot log in to: cofferd --init-token sets the PIN (exit 0);
    # a whole token it leaves alone (exit 3).
    if [ -f "$user_pin" ] && [ -f "$so_pin" ]; then
        rc=0
        run_init || rc=$?
        case $rc in
        0) printf '%s\n' "$out" >&2; summary; exit 0 ;;
        3) ;;
        *) printf '%s\n' "$out" >&2; die "cofferd --init-token failed" ;;
        esac
    fi
    echo "$prog: a token labelled \"$label\" already exists in $tokens; not re-initialising it" >&2
    [ -f "$user_pin" ] || echo "$prog: warning: $user_pin is missing; this token's user PIN is not in $dir" >&2
    summary
    exit 0
fi

# New PINs: 32 hex characters from OpenSSL's CSPRNG. Refuse to overwrite PIN
# files that may belong to another token in this directory.
for f in "$user_pin" "$so_pin"; do
    [ ! -e "$f" ] || die "$f exists but no token \"$label\" does; move it away first (it may hold the PIN of another token)"
done
upin=$("$OPENSSL" rand -hex 16) || die "openssl rand failed"
spin=$("$OPENSSL" rand -hex 16) || die "openssl rand failed"
if [ ${#upin} -ne 32 ] || [ ${#spin} -ne 32 ]; then die "openssl rand returned short output"; fi
# A run cut short (an error, Ctrl-C) leaves no PIN file of a token that was
# never made: a re-run would refuse to overwrite it.
done_ok=0
# (Interrupted just as softhsm2-util finished, the token may exist: its PINs stay.)
cleanup() {
    rm -f "${tu:-}" "${ts:-}"
    [ "$done_ok" = 1 ] || has_token || rm -f "$user_pin" "$so_pin"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
# New files of mode 0600 (mktemp, umask 077), never one a leftover or a
# planted link named.
tu=$(mktemp "$dir/.user.pin.XXXXXX") && ts=$(mktemp "$dir/.so.pin.XXXXXX") ||
    die "cannot create a file in $dir"
printf '%s\n' "$upin" >"$tu" || die "cannot write $tu"
printf '%s\n' "$spin" >"$ts" || die "cannot write $ts"
mv "$tu" "$user_pin" && mv "$ts" "$so_pin" || die "cannot create the PIN files in $dir"

unset upin spin
if ! run_init; then
    printf '%s\n' "$out" >&2
    die "cofferd --init-token failed"
fi
done_ok=1
echo "$prog: initialised token \"$label\" in $tokens" >&2
summary
