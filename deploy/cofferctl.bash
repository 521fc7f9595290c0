# bash completion for cofferctl. The commands and options are read from
# cofferctl's own --help, so this file never falls behind the tool.
# Install: /usr/share/bash-completion/completions/cofferctl (cmake --install
# does), or `source deploy/cofferctl.bash`.
_cofferctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prog=${COMP_WORDS[0]} w i
    local -a cmd=()
    # The command words typed so far: neither options nor option values.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $w == -* ]]; then
            continue
        fi
        if [[ ${COMP_WORDS[i - 1]} == --* && ${COMP_WORDS[i - 1]} != --json &&
              ${COMP_WORDS[i - 1]} != --help ]]; then
            continue
        fi
        cmd+=("$w")
    done
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$("$prog" "${cmd[@]:0:2}" --help 2>/dev/null |
            grep -o -- '--[a-z][a-z-]*' | sort -u)" -- "$cur"))
        return
    fi
    local table
    table=$("$prog" --help 2>/dev/null | sed -n '/^Commands:/,/^$/p' |
        awk '/^  [a-z]/ { if ($2 ~ /^[a-z][a-z-]*$/) print $1, $2; else print $1 }')
    if ((${#cmd[@]} == 0)); then
        COMPREPLY=($(compgen -W "$(awk '{print $1}' <<<"$table" | sort -u)" -- "$cur"))
    elif ((${#cmd[@]} == 1)); then
        COMPREPLY=($(compgen -W "$(awk -v c="${cmd[0]}" '$1 == c && NF == 2 {print $2}' \
            <<<"$table")" -- "$cur"))
        if ((${#COMPREPLY[@]} == 0)); then
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}
complete -F _cofferctl cofferctl
