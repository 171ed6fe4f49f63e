//! The held etcd lock (SPEC §10): supervision's [`Guard`] over our lease, the
//! command's `XLOCK_TOKEN`, and release (unlock, revoke the lease).
//!
//! The guard asks the lease's judgement when a renewal is due (the send time of the
//! last acknowledged renewal plus a third of the TTL) and, while a renewal is
//! outstanding, every few hundred milliseconds up to the moment the lease counts as
//! lost: then supervision sends SIGTERM to the command's whole tree, and SIGKILL at
//! `kill_by`, about 1 s before the lease can expire. Depends on
//! [`lease`](super::lease) and [`client`](super::client).

use std::cell::Cell;
use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::client::Client;
use super::lease::{Judged, Lease};
use crate::lock::{Holding, Released};
use crate::supervise::{Guard, Health};

/// The variable that carries the fencing token.
pub const TOKEN_ENV: &str = "XLOCK_TOKEN";

/// An etcd lock this process holds.
pub struct Held {
    pub(super) client: Arc<Client>,
    pub(super) lease: Lease,
    /// Our key: `NAME/<lease id in hex>`.
    pub(super) key: Vec<u8>,
    /// The URL as given, for `XLOCK_PATH` and messages.
    pub(super) name: PathBuf,
    pub(super) nonce: String,
    /// The key's create revision: the fencing token.
    pub(super) token: i64,
    /// When the guard last looked.
    pub(super) checked: Cell<Instant>,
    pub(super) lost: Cell<bool>,
}

impl Held {
    /// How often the guard looks while a renewal is outstanding.
    fn poll(&self) -> Duration {
        (self.lease.ttl / 30).clamp(Duration::from_millis(50), Duration::from_millis(500))
    }

    /// A call's time limit at release: short, as the lease expires anyway.
    fn release_timeout(&self) -> Duration {
        (self.lease.ttl / 3).min(Duration::from_secs(5))
    }
}

impl Guard for Held {
    fn next_check(&self) -> Option<Instant> {
        if self.lost.get() {
            return None;
        }
        if self.lease.expired() {
            // Due already: a moment in the past, not `Instant::now()`, which would be
            // later than the `now` supervision compares it with, so never due (and
            // supervision would spin on a zero timeout, the command left running).
            return Some(self.checked.get());
        }
        let (renewal, lost_at) = self.lease.due();
        Some(next_look(renewal, lost_at, self.checked.get(), self.poll()))
    }

    fn check(&self) -> Health {
        let now = Instant::now();
        self.checked.set(now);
        match self.lease.judge(now) {
            Judged::Held => Health::Held,
            Judged::Lost { why, kill_by, expired } => {
                self.lost.set(true);
                self.lease.stop();
                let stopping = if expired {
                    "stopping the command's whole tree now; the lease may be gone already, and another \
                     holder running"
                } else {
                    "stopping the command's whole tree before the lease can expire \
                     (another holder may get the lock then)"
                };
                Health::Lost {
                    message: format!(
                        "lock lost: {}: {why}; {stopping}; check the network to etcd at {}",
                        self.name.display(),
                        self.client.shown_endpoints()
                    ),
                    kill_by: Some(kill_by),
                }
            }
        }
    }
}

impl Holding for Held {
    fn identity(&self) -> (&Path, &str) {
        (&self.name, &self.nonce)
    }

    fn env(&self) -> Option<(&'static str, OsString)> {
        Some((TOKEN_ENV, self.token.to_string().into()))
    }

    fn inherit(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Unlock (delete our key), then revoke the lease. A lock found lost was said so
    /// then; its lease is revoked all the same, in case it lives on.
    fn release(self, _name_them: bool) -> Result<Released> {
        self.lease.stop();
        let timeout = self.release_timeout();
        if self.lost.get() {
            let _ = self.client.revoke(self.lease.id, timeout);
            return Ok(Released::WasLost);
        }
        let unlocked = self.client.unlock(&self.key, timeout);
        let revoked = self.client.revoke(self.lease.id, timeout);
        match unlocked.and(revoked) {
            Ok(()) => Ok(Released::Removed),
            Err(err) => Err(anyhow::anyhow!(
                "cannot release {} at etcd {}: {err}; it is released when its lease expires, within {}s",
                self.name.display(),
                self.client.shown_endpoints(),
                self.lease.ttl.as_secs()
            )),
        }
    }
}

/// When the guard looks next: when the renewal is due, if it has not looked since;
/// else (the renewal is outstanding) `poll` after its last look, but no later than
/// the moment the lease counts as lost.
fn next_look(renewal: Instant, lost_at: Instant, checked: Instant, poll: Duration) -> Instant {
    if renewal > checked {
        renewal
    } else {
        (checked + poll).min(lost_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_looks_when_a_renewal_is_due_then_polls_up_to_the_loss() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let poll = Duration::from_millis(300);
        // Acknowledged at t0, TTL 30 s: renewal due at 10 s, lost at 20 s.
        let (renewal, lost_at) = (t0 + s(10), t0 + s(20));
        assert_eq!(next_look(renewal, lost_at, t0, poll), renewal);
        // Looked at 10 s, no answer yet: again shortly.
        assert_eq!(next_look(renewal, lost_at, renewal, poll), renewal + poll);
        // Never past the loss.
        let late = lost_at - Duration::from_millis(100);
        assert_eq!(next_look(renewal, lost_at, late, poll), lost_at);
    }
}
