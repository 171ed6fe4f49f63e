complete -c xlock -s w -l timeout -d 'Wait at most DUR for the lock: 250ms, 5s, 1m30s, or a number of seconds (0.5). 0 tries once. Default: wait forever' -r
complete -c xlock -s E -l conflict-exit-code -d 'Exit status when the lock could not be had' -r
complete -c xlock -s c -l command -d 'Run STR with /bin/sh -c' -r
complete -c xlock -l stale-after -d 'How old another host\'s heartbeat (the lock file\'s mtime) may get before its lock counts as stale; the holder refreshes it every DUR/3' -r
complete -c xlock -s n -l nonblock -d 'Fail at once if the lock is busy (same as --timeout 0)'
complete -c xlock -s v -l verbose -d 'Say on stderr what happened: waits, take-overs, release'
complete -c xlock -s q -l quiet -d 'Print nothing of xlock\'s own but errors'
complete -c xlock -s o -l close -d 'Do not let the command inherit the lock: if xlock dies, the command is killed'
complete -c xlock -s x -s e -l exclusive -d 'Take an exclusive lock: the default, accepted as flock(1) spells it'
complete -c xlock -l status -d 'Report each LOCK (free, held by whom, stale) instead of running anything; exit 0 if all are free, 75 (or -E) if any is held'
complete -c xlock -l json -d 'With --status: print one JSON object per lock'
complete -c xlock -s h -l help -d 'Print help (see more with \'--help\')'
complete -c xlock -s V -l version -d 'Print version'
