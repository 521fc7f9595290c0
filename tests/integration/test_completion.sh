#!/bin/bash
# The bash completion of cofferctl (deploy/cofferctl.bash) offers exactly
# what cofferctl --help lists: commands, subcommands and each command's
# options.
set -euo pipefail
src=${COFFER_SOURCE_DIR:?}
ctl=${COFFER_BUILD_DIR:?}/cofferctl
source "$src/deploy/cofferctl.bash"

complete_words() {   # words... (the last is the one being completed)
    COMP_WORDS=("$ctl" "$@")
    COMP_CWORD=$#
    COMPREPLY=()
    _cofferctl
    printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' '
}

fail=0
check() {   # expected, words...
    local want=$1 got
    shift
    got=$(complete_words "$@")
    if [[ $got != "$want" ]]; then
        echo "FAIL: cofferctl $* <TAB>: got '$got', want '$want'"
        fail=1
    else
        echo "ok: cofferctl $* <TAB> -> $got"
    fi
}
check "add-key create delete grant keys limit list revoke revoke-key rotate-secret set-auth show " principal ""
check "--signed-only " principal set-auth demo --si
check "revoke revoke-key rotate-secret " principal r
check "tail verify " audit ""
check "sign verify " request ""
check "--signature " request verify k --sig
check "--nonce " request sign k --method GET --path / --n
check "key " ke
check "cancel-destroy create disable enable import list pubkey rotate schedule-destroy set-min set-primary set-rotation show trim " key ""
check "--count " audit tail --co
check "--overlap " principal rotate-secret ak_x --ov
check "--force " key schedule-destroy k 1 --fo
check "--idempotency-key --identity --import " --json principal add-key demo --i
# Every top-level command of --help is offered.
want=$("$ctl" --help | sed -n '/^Commands:/,/^$/p' | awk '/^  [a-z]/ {print $1}' | sort -u | tr '\n' ' ')
check "$want" ""
exit $fail
