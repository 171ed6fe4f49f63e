//! Our lease (SPEC §10): granted with TTL = `--stale-after`, renewed every third of it
//! by a thread of its own from the moment it is granted (while waiting too), and
//! judged: held, or lost once a third of the TTL or less remains since the send time
//! of the last acknowledged renewal (at once when a renewal is answered with TTL 0).
//!
//! The thread never blocks the main thread: it records each acknowledgement, and the
//! main thread reads the record ([`Lease::judge`]) when supervision asks. Each renewal
//! has a timeout that ends before the lease could expire. Depends on
//! [`client`](super::client).

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::client::{Client, RpcError};

/// What the renewal thread has seen.
#[derive(Debug, Clone)]
struct Seen {
    /// Send time of the last acknowledged renewal (or of the grant).
    acked: Instant,
    /// A renewal was answered with TTL 0: the lease is gone.
    expired: bool,
    /// The last renewal's failure, if the last one failed.
    error: Option<String>,
}

struct Shared {
    seen: Mutex<Seen>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A granted lease, renewed by its thread until [`Lease::stop`] or drop.
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
    shared: Arc<Shared>,
}

/// The judgement on the lease at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    Held,
    /// Lost: why, when the command's tree must have been killed, and whether the
    /// lease may have expired already (this process was paused past its TTL, or the
    /// server said so): then another holder may be running.
    Lost {
        why: String,
        kill_by: Instant,
        expired: bool,
    },
}

impl Lease {
    /// Grants a lease of `ttl` (whole seconds, rounded up) and starts renewing it.
    pub fn grant(client: &Arc<Client>, ttl: Duration, timeout: Duration) -> Result<Lease, RpcError> {
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let sent = Instant::now();
        let id = client.grant(seconds as i64, timeout)?;
        let ttl = Duration::from_secs(seconds);
        let shared = Arc::new(Shared {
            seen: Mutex::new(Seen {
                acked: sent,
                expired: false,
                error: None,
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let client = Arc::clone(client);
        thread::Builder::new()
            .name("xlock-lease".into())
            .spawn(move || renew(&client, id, ttl, &thread_shared))
            .map_err(|err| RpcError::Unreachable(format!("cannot start the lease renewal thread: {err}")))?;
        Ok(Lease { id, ttl, shared })
    }

    /// The lease as of now: held, or lost (and when its command must be killed by).
    pub fn judge(&self, now: Instant) -> Judged {
        let seen = self.seen();
        judge(&seen_fields(&seen), self.ttl, now)
    }

    /// When the next renewal is due (the send time of the last acknowledged one plus
    /// a third of the TTL), and when the lease counts as lost if none is acknowledged.
    pub fn due(&self) -> (Instant, Instant) {
        let seen = self.seen();
        (seen.acked + self.ttl / 3, seen.acked + self.ttl * 2 / 3)
    }

    /// Whether a renewal was answered with TTL 0.
    pub fn expired(&self) -> bool {
        self.seen().expired
    }

    fn seen(&self) -> Seen {
        match self.shared.seen.lock() {
            Ok(seen) => seen.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Stops renewing (the thread ends at its next wake-up; a renewal in flight is
    /// not waited for).
    pub fn stop(&self) {
        if let Ok(mut stop) = self.shared.stop.lock() {
            *stop = true;
        }
        self.shared.wake.notify_all();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The judgement's inputs, apart from the clock.
struct Fields<'a> {
    acked: Instant,
    expired: bool,
    error: Option<&'a str>,
}

fn seen_fields(seen: &Seen) -> Fields<'_> {
    Fields {
        acked: seen.acked,
        expired: seen.expired,
        error: seen.error.as_deref(),
    }
}

/// SIGKILL this long before the lease expires (about 1 s; less for a short TTL, so
/// that SIGTERM comes first).
fn kill_margin(ttl: Duration) -> Duration {
    (ttl / 6).min(Duration::from_secs(1))
}

/// Lost when a renewal was answered with TTL 0, or when a third of the TTL or less
/// remains since the send time of the last acknowledged renewal.
fn judge(fields: &Fields<'_>, ttl: Duration, now: Instant) -> Judged {
    let expiry = fields.acked + ttl;
    let why = |what: String| match fields.error {
        Some(error) => format!("{what} (last renewal: {error})"),
        None => what,
    };
    if fields.expired {
        return Judged::Lost {
            why: why("etcd says the lease has expired".into()),
            kill_by: now,
            expired: true,
        };
    }
    if expiry.saturating_duration_since(now) <= ttl / 3 {
        let late = now >= expiry - kill_margin(ttl);
        return Judged::Lost {
            why: why(format!(
                "no lease renewal acknowledged for {:.1}s of its {}s TTL{}",
                now.saturating_duration_since(fields.acked).as_secs_f64(),
                ttl.as_secs(),
                if late {
                    " (was xlock paused, or the machine suspended?)"
                } else {
                    ""
                }
            )),
            kill_by: (expiry - kill_margin(ttl)).max(now),
            // Past the SIGKILL moment: this process did not run in time (paused,
            // suspended), and the server may have expired the lease.
            expired: late,
        };
    }
    Judged::Held
}

/// The renewal thread: a renewal every third of the TTL from the send time of the
/// last acknowledged one; after a failure, another every tenth (each with a timeout
/// that ends before the lease could expire), until the lease has expired or it is
/// told to stop.
fn renew(client: &Client, id: i64, ttl: Duration, shared: &Shared) {
    let retry = (ttl / 10).max(Duration::from_millis(100));
    let mut next = Instant::now() + ttl / 3;
    loop {
        {
            let Ok(mut stop) = shared.stop.lock() else { return };
            loop {
                if *stop {
                    return;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                stop = match shared.wake.wait_timeout(stop, next - now) {
                    Ok((stop, _)) => stop,
                    Err(_) => return,
                };
            }
        }
        let acked = shared
            .seen
            .lock()
            .map(|s| s.acked)
            .unwrap_or_else(|p| p.into_inner().acked);
        let sent = Instant::now();
        let left = (acked + ttl).saturating_duration_since(sent);
        if left.is_zero() {
            return; // expired: the judgement says so
        }
        let answer = client.keepalive(id, left.min(ttl / 3));
        let Ok(mut seen) = shared.seen.lock() else { return };
        match answer {
            Ok(0) => {
                seen.expired = true;
                return;
            }
            Ok(_) => {
                seen.acked = sent;
                seen.error = None;
                next = sent + ttl / 3;
            }
            Err(err) => {
                seen.error = Some(err.to_string());
                next = Instant::now() + retry;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn at(acked: Instant, expired: bool, now: Instant) -> Judged {
        judge(
            &Fields {
                acked,
                expired,
                error: None,
            },
            TTL,
            now,
        )
    }

    #[test]
    fn held_until_a_third_of_the_ttl_remains_unacknowledged() {
        let t0 = Instant::now();
        assert_eq!(at(t0, false, t0), Judged::Held);
        assert_eq!(at(t0, false, t0 + Duration::from_secs(19)), Judged::Held);
        let Judged::Lost { kill_by, why, expired } = at(t0, false, t0 + Duration::from_secs(20)) else {
            panic!("held at two thirds");
        };
        assert_eq!(kill_by, t0 + Duration::from_secs(29), "SIGKILL 1 s before expiry");
        assert!(!expired, "judged in time: stopped before the lease can expire");
        assert!(
            why.contains("no lease renewal acknowledged for 20.0s of its 30s TTL"),
            "{why}"
        );
    }

    #[test]
    fn ttl_zero_is_lost_at_once() {
        let t0 = Instant::now();
        let Judged::Lost { kill_by, expired, .. } = at(t0, true, t0 + Duration::from_secs(1)) else {
            panic!("an expired lease held");
        };
        assert_eq!(kill_by, t0 + Duration::from_secs(1));
        assert!(expired);
    }

    #[test]
    fn judged_only_after_a_pause_past_the_ttl_the_lease_may_be_gone_already() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(45);
        let Judged::Lost { kill_by, expired, why } = at(t0, false, late) else {
            panic!("held after a pause past the TTL");
        };
        assert_eq!(kill_by, late);
        assert!(
            why.ends_with("45.0s of its 30s TTL (was xlock paused, or the machine suspended?)"),
            "{why}"
        );
        assert!(expired, "a pause past the TTL: another holder may run already");
    }

    #[test]
    fn a_short_ttl_still_gets_sigterm_before_sigkill() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3);
        let fields = Fields {
            acked: t0,
            expired: false,
            error: Some("timed out"),
        };
        let Judged::Lost { kill_by, why, .. } = judge(&fields, ttl, t0 + Duration::from_secs(2)) else {
            panic!("held");
        };
        assert_eq!(kill_by, t0 + Duration::from_millis(2500));
        assert!(why.ends_with("(last renewal: timed out)"), "{why}");
    }
}
