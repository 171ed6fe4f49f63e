"""Reports the signals it receives, one line each: NAME SENDER_PID SI_CODE.

Used by the signal tests: it blocks the signals it watches and takes them with
sigwaitinfo, so it sees who sent each one (si_pid) and how (si_code; 128 is
SI_KERNEL, the terminal). It prints `started` once ready, writes its lines to the
file named by its first argument (or stdout), and exits 0 after SIGTERM, the end
marker the tests send last: a signal of lower number that was still pending (a
duplicate SIGHUP, SIGINT or SIGUSR1) is taken before it.
"""
import os
import signal
import sys

WATCHED = [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
           signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH]

signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
out = open(sys.argv[1], "a", buffering=1) if len(sys.argv) > 1 else sys.stdout
if out is not sys.stdout:
    # From here on nothing goes to the terminal, which a test may hang up: any
    # error lands in the log, where the test shows it.
    sys.stderr = out
os.write(1, b"started\n")
while True:
    info = signal.sigwaitinfo(WATCHED)
    name = signal.Signals(info.si_signo).name
    out.write(f"{name} {info.si_pid} {info.si_code}\n")
    out.flush()
    if info.si_signo == signal.SIGTERM:
        sys.exit(0)
