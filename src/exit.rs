//! How xlock ends (SPEC §3): one enum for every exit status, so the mapping from
//! "what happened" to "what the caller sees" lives in exactly one place.

use crate::signals;

/// The status xlock should end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// xlock did what was asked without running a command (`--help`, `--status`).
    Success,
    /// The command ran and exited with this code, passed through unchanged.
    Child(u8),
    /// The command was killed by this signal: xlock dies of the same signal.
    Signaled(i32),
    /// The lock was busy (`-n` conflict or `--timeout` expired): 75 or `-E N`.
    Busy(u8),
    /// xlock itself failed (usage, bad LOCK, permission, I/O).
    Failure,
    /// The command was found but could not be executed.
    CannotExecute,
    /// The command was not found.
    NotFound,
}

impl Exit {
    /// EX_TEMPFAIL from sysexits.h, as the default for a busy lock.
    pub const DEFAULT_BUSY: u8 = 75;

    /// The numeric exit status. For [`Exit::Signaled`] this is the 128+N that a shell
    /// reports, which xlock uses only where it cannot die of the signal itself.
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Child(code) | Exit::Busy(code) => i32::from(code),
            Exit::Signaled(signal) => 128 + signal,
            Exit::Failure => 125,
            Exit::CannotExecute => 126,
            Exit::NotFound => 127,
        }
    }

    /// Ends the process with this status.
    pub fn exit(self) -> ! {
        if let Exit::Signaled(signal) = self {
            signals::die_of(signal);
        }
        std::process::exit(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_follow_the_contract() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Child(0).code(), 0);
        assert_eq!(Exit::Child(7).code(), 7);
        assert_eq!(Exit::Child(255).code(), 255);
        assert_eq!(Exit::Busy(Exit::DEFAULT_BUSY).code(), 75);
        assert_eq!(Exit::Busy(9).code(), 9);
        assert_eq!(Exit::Failure.code(), 125);
        assert_eq!(Exit::CannotExecute.code(), 126);
        assert_eq!(Exit::NotFound.code(), 127);
        assert_eq!(Exit::Signaled(15).code(), 143);
        assert_eq!(Exit::Signaled(2).code(), 130);
    }

    #[test]
    fn xlock_own_codes_are_distinct() {
        let own = [Exit::Failure, Exit::CannotExecute, Exit::NotFound, Exit::Busy(75)];
        for (i, a) in own.iter().enumerate() {
            for b in &own[i + 1..] {
                assert_ne!(a.code(), b.code(), "{a:?} and {b:?} share a code");
            }
        }
    }
}
