# bash completion for xlock(1)                              -*- shell-script -*-
#
#   xlock [OPTIONS] LOCK [--] COMMAND [ARG]...
#   xlock [OPTIONS] LOCK -c 'SHELL COMMAND'
#   xlock --status [--json] LOCK...
#
# Before LOCK: xlock's options (when the word starts with -) or, as LOCK, file names.
# After LOCK: the command's name, then that command's own completion
# (bash-completion's _command_offset), never xlock's options. After --status, every
# word is a LOCK. Option values (-w, -E, --stale-after, --slots) complete nothing; -c completes
# command names.
#
# Keep the option list in step with src/cli.rs: the drift test in
# tests/it/completions.rs compares what this script offers with the CLI definition.

_xlock()
{
    local cur prev words cword split
    _init_completion -s || return

    # Find LOCK: the first word that is neither an option nor an option's value.
    # value: the option whose value the word at the cursor is.
    local i word status_mode='' lock='' value=''
    for ((i = 1; i < cword; i++)); do
        word=${words[i]}
        case $word in
            --status)
                status_mode=1
                ;;
            --timeout | --conflict-exit-code | --command | --stale-after | --slots)
                ((++i == cword)) && value=$word
                ;;
            --)
                lock=$((i + 1))
                break
                ;;
            --*) ;;
            -?*)
                # A cluster of short options: a value-taking letter at its end takes
                # the next word (-nw 5); one inside it takes the rest (-w5, -cecho).
                local j
                for ((j = 1; j < ${#word}; j++)); do
                    if [[ ${word:j:1} == [wEc] ]]; then
                        ((j == ${#word} - 1)) && ((++i == cword)) && value=-${word:j:1}
                        break
                    fi
                done
                ;;
            *)
                lock=$i
                break
                ;;
        esac
    done

    if [[ $lock ]] && ((cword > lock)); then
        # After LOCK: every word is a LOCK with --status, else the command.
        if [[ $status_mode ]]; then
            _filedir
            return
        fi
        local first=$((lock + 1))
        if [[ ${words[first]} == -- ]] && ((cword > first)); then
            ((first++))
        elif [[ ${words[first]} == -c ]] && ((cword > first)); then
            # LOCK -c STR: STR is a shell command; nothing can follow it.
            ((cword == first + 1)) && COMPREPLY=($(compgen -c -- "$cur"))
            return
        fi
        # _command_offset counts in COMP_WORDS, where readline made each '=' a word
        # of its own (--timeout = 5s); _init_completion joined them again in words.
        local k=0 n=0 joined=''
        for ((n = 0; k < first && n < ${#COMP_WORDS[@]}; n++)); do
            joined+=${COMP_WORDS[n]}
            [[ $joined == "${words[k]}" ]] && joined='' && ((++k))
        done
        _command_offset $n
        return
    fi

    # With --opt=VALUE, _init_completion -s has put --opt in prev.
    $split && value=$prev
    case $value in
        -w | --timeout | --stale-after | -E | --conflict-exit-code | --slots)
            return
            ;;
        -c | --command)
            COMPREPLY=($(compgen -c -- "$cur"))
            return
            ;;
    esac

    if [[ $cur == -* && ! $lock ]]; then
        COMPREPLY=($(compgen -W '-w --timeout -n --nonblock -E --conflict-exit-code
            -c --command -v --verbose -q --quiet --close -o -x -e --exclusive
            -s --shared --slots --stale-after --status --json -h --help -V --version' -- "$cur"))
        return
    fi
    _filedir
} &&
    complete -F _xlock xlock

# ex: filetype=sh
