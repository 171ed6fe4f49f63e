# fish completion for xlock(1)
#
#   xlock [OPTIONS] LOCK [--] COMMAND [ARG]...
#   xlock [OPTIONS] LOCK -c 'SHELL COMMAND'
#   xlock --status [--json] LOCK...
#
# Before LOCK: xlock's options and, as LOCK, file names. After LOCK: the command's
# name, then that command's own completion (__fish_complete_subcommand), never
# xlock's options. After --status, every word is a LOCK. Option values (-w, -E,
# --stale-after, --slots) complete nothing; -c completes a command.
#
# Keep the option list in step with src/cli.rs: the drift test in
# tests/it/completions.rs compares what this script offers with the CLI definition.

# Where the cursor is: "options" (LOCK not given yet), "status" (after a LOCK, with
# --status) or "command" (after LOCK). For "command", also prints the words after
# LOCK (an optional -- included), the current one included, one per line.
function __xlock_where
    set -l words (commandline -opc)
    set -l n (count $words)
    set -l status_mode 0
    set -l i 2
    while test $i -le $n
        set -l word $words[$i]
        switch $word
            case --status
                set status_mode 1
            case --timeout --conflict-exit-code --command --stale-after --slots
                set i (math $i + 1)
            case --
                set i (math $i + 1)
                break
            case '--*'
            case '-*'
                # A short option that takes a value, last in its cluster (-nw 5),
                # takes the next word; inside it, the rest of the cluster (-w5).
                if string match -qr -- '^-[^wEc]*[wEc]$' $word
                    set i (math $i + 1)
                end
            case '*'
                break
        end
        set i (math $i + 1)
    end
    # LOCK is words[i]; the cursor is on word n + 1.
    if test $i -gt $n
        echo options
    else if test $status_mode = 1
        echo status
    else
        echo command
        printf '%s\n' $words[(math $i + 1)..-1] (commandline -ct)
    end
end

function __xlock_at
    test (__xlock_where)[1] = $argv[1]
end

function __xlock_complete_command
    set -l rest (__xlock_where)[2..-1]
    # LOCK -c STR: STR is a shell command, and nothing can follow it; after LOCK --,
    # -c is a program's name.
    if test "x$rest[1]" = x-c -a (count $rest) -gt 1
        test (count $rest) -eq 2; and __fish_complete_command
        return
    end
    if test "x$rest[1]" = x-- -a (count $rest) -gt 1
        set -e rest[1]
    end
    if not string match -q -- '-*' $rest[1]
        __fish_complete_subcommand --commandline $rest
    end
end

complete -c xlock -f
complete -c xlock -n '__xlock_at options' -F
complete -c xlock -n '__xlock_at status' -F
complete -c xlock -n '__xlock_at command' -a '(__xlock_complete_command)'

complete -c xlock -n '__xlock_at options' -s w -l timeout -x -d 'Wait at most DUR for the lock (250ms, 5s, 1m30s, 0.5)'
complete -c xlock -n '__xlock_at options' -s n -l nonblock -d 'Fail at once if the lock is busy'
complete -c xlock -n '__xlock_at options' -s E -l conflict-exit-code -x -d 'Exit status when the lock could not be had (default 75)'
complete -c xlock -n '__xlock_at options' -s c -l command -x -a '(__fish_complete_command)' -d 'Run STR with /bin/sh -c'
complete -c xlock -n '__xlock_at options' -s v -l verbose -d 'Say on stderr what happened'
complete -c xlock -n '__xlock_at options' -s q -l quiet -d "Print nothing of xlock's own but errors"
complete -c xlock -n '__xlock_at options' -l close -d 'Do not let the command inherit the lock'
complete -c xlock -n '__xlock_at options' -s o -d 'Same as --close (flock(1) spelling)'
complete -c xlock -n '__xlock_at options' -s x -s e -l exclusive -d 'Exclusive lock (the default)'
complete -c xlock -n '__xlock_at options' -s s -l shared -d 'Shared lock: many shared holders at once'
complete -c xlock -n '__xlock_at options' -l slots -x -d 'One of N slots: at most N holders; the command gets XLOCK_SLOT'
complete -c xlock -n '__xlock_at options' -l stale-after -x -d "How old another host's heartbeat may get (default 30s)"
complete -c xlock -n '__xlock_at options' -l status -d 'Report each LOCK instead of running anything'
complete -c xlock -n '__xlock_at options' -l json -d 'With --status: one JSON object per lock'
complete -c xlock -n '__xlock_at options' -s h -l help -d 'Print help'
complete -c xlock -n '__xlock_at options' -s V -l version -d 'Print version'
