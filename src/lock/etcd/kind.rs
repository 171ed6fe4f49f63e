//! The etcd lock as a [`Kind`] (SPEC §10): acquire (lease, our record at our key,
//! the Lock RPC waited for on a thread of its own, the check against etcd issue
//! 11456), nesting, and `--status`'s look.
//!
//! Our key is the one etcd's lock service uses, `NAME/<lease id in hex>`; we put our
//! holder record there with our lease *before* calling Lock, which then keeps the
//! key (its create revision, the queue position, and its value, the record). So the
//! holder and every waiter are named by their records, in create-revision order: the
//! first key is the holder, the rest wait in arrival order, each on its predecessor
//! (no thundering herd). Depends on [`client`](super::client),
//! [`lease`](super::lease), [`held`](super::held) and [`url`](super::url).

use std::cell::Cell;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::client::{Client, Kv, RpcError, USER_ENV};
use super::held::Held;
use super::lease::{Judged, Lease};
use super::url::Url;
use crate::liveness::Identity;
use crate::lock::{Acquired, Holder, HolderState, Kind, Request, State};
use crate::nesting::Inherited;
use crate::record::Record;
use crate::signals::{self, Event};

/// A call's time limit when nothing shorter is asked for.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest time limit a call gets, however little of the wait is left.
const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// The lock `NAME` on an etcd cluster.
pub struct EtcdLock {
    url: Url,
    name: PathBuf,
    client: Arc<Client>,
}

impl EtcdLock {
    /// The lock `url` names; reads etcdctl's TLS and auth variables (no network yet).
    pub fn new(url: &Url) -> Result<EtcdLock> {
        let client = Client::new(url).map_err(|message| anyhow!("{message}"))?;
        Ok(EtcdLock {
            url: url.clone(),
            name: PathBuf::from(&url.text),
            client: Arc::new(client),
        })
    }

    fn prefix(&self) -> Vec<u8> {
        format!("{}/", self.url.name).into_bytes()
    }

    /// An error of `doing` (e.g. "grant a lease"), naming the lock, the endpoints and
    /// what to do.
    fn failed(&self, doing: &str, err: &RpcError) -> anyhow::Error {
        let remedy = match err {
            RpcError::Unreachable(_) => format!(
                "check that etcd runs at {} and that this is its client port (etcd --listen-client-urls)",
                self.client.shown_endpoints()
            ),
            RpcError::Server { message, .. } if ["auth", "permission", "user"].iter().any(|w| message.contains(w)) => {
                format!(
                    "check {USER_ENV} (USER:PASSWORD) and that user's permissions on the prefix {}/",
                    self.url.name
                )
            }
            RpcError::Server { .. } => format!("etcd at {} refused it", self.client.shown_endpoints()),
        };
        anyhow!("cannot {doing} for {}: {err}; {remedy}", self.url)
    }

    /// The keys under our prefix, oldest first: the holder, then the waiters.
    fn queue(&self, limit: i64, timeout: Duration) -> Result<Vec<Kv>> {
        self.client
            .range_prefix(&self.prefix(), limit, timeout)
            .map_err(|err| self.failed("read the lock's holder", &err))
    }
}

/// A call's time limit while `req` waits: what is left of the wait, within bounds.
fn call_timeout(req: &Request<'_>) -> Duration {
    req.deadline
        .remaining()
        .map_or(CALL_TIMEOUT, |left| left.clamp(MIN_CALL_TIMEOUT, CALL_TIMEOUT))
}

/// The record a key carries, if it is one of xlock's.
fn record_of(kv: &Kv) -> Option<Record> {
    Record::parse(&kv.value).ok()
}

impl Kind for EtcdLock {
    type Held = Held;

    fn name(&self) -> &Path {
        &self.name
    }

    fn acquire(&self, req: &Request<'_>, mut record: Record) -> Result<Acquired<Held>> {
        let timeout = call_timeout(req);
        let lease =
            Lease::grant(&self.client, req.stale_after, timeout).map_err(|err| self.failed("grant a lease", &err))?;
        let giving_up = |lease: &Lease| {
            lease.stop();
            let _ = self.client.revoke(lease.id, timeout);
        };
        let key = format!("{}/{:x}", self.url.name, lease.id).into_bytes();
        record.since = crate::lock::file::now();
        let revision = match self.client.put(&key, &record.to_line(), lease.id, timeout) {
            Ok(revision) => revision,
            Err(err) => {
                giving_up(&lease);
                return Err(self.failed("put the holder record", &err));
            }
        };
        let first = match self.queue(1, timeout) {
            Ok(first) => first,
            Err(err) => {
                giving_up(&lease);
                return Err(err);
            }
        };
        let mut ours = first.first().is_none_or(|kv| kv.key == key);
        let mut holder = first.first().filter(|kv| kv.key != key).and_then(record_of);
        if !ours && req.deadline.passed() {
            giving_up(&lease);
            return Ok(Acquired::Busy(holder, Vec::new()));
        }
        // The Lock RPC blocks until the lock is ours: on a thread, so that this one
        // keeps the deadline, the signals and the waiting notice.
        let (sent, answer) = mpsc::channel();
        let (ready, mut ready_writer) = std::io::pipe().context("cannot create a pipe")?;
        let client = Arc::clone(&self.client);
        let (name, lease_id) = (self.url.name.clone().into_bytes(), lease.id);
        std::thread::Builder::new()
            .name("xlock-lock".into())
            .spawn(move || {
                let answer = loop {
                    match client.lock(&name, lease_id) {
                        Err(err) if err.is_transient() => std::thread::sleep(Duration::from_millis(200)),
                        answer => break answer,
                    }
                };
                let _ = sent.send(answer);
                let _ = ready_writer.write_all(b"x");
            })
            .context("cannot start a thread")?;
        let waited = !ours;
        let tick = req.report.tick();
        let mut next_tick = Instant::now() + tick.unwrap_or(Duration::ZERO);
        // Every third of the TTL, a look at the line too: our key first is the lock
        // ours (what the Lock RPC waits for), even if its answer never comes (its
        // endpoint froze with the call in flight while renewals went to another).
        let poll = lease.ttl / 3;
        let mut next_poll = Instant::now() + poll;
        let mut first_in_line = false;
        if let Some(holder) = &holder {
            req.report.waiting(holder, Vec::new);
        }
        loop {
            let now = Instant::now();
            if let Judged::Lost { why, .. } = lease.judge(now) {
                giving_up(&lease);
                req.report.done_waiting();
                bail!(
                    "lost the lease while waiting for {}: {why}; check the network to etcd at {}",
                    self.url,
                    self.client.shown_endpoints()
                );
            }
            let (_, lost_at) = lease.due();
            let mut until = lost_at;
            if let Some(end) = req.deadline.end().filter(|_| !ours) {
                until = until.min(end);
            }
            if tick.is_some() && holder.is_some() {
                until = until.min(next_tick);
            }
            until = until.min(next_poll);
            let event = req
                .signals
                .wait(Some(ready.as_fd()), Some(until.saturating_duration_since(now)))
                .context("cannot wait for signals")?;
            match event {
                Event::Ready => break,
                Event::Signal(info) if signals::ends_wait(signals::number(&info)) => {
                    giving_up(&lease);
                    req.report.done_waiting();
                    return Ok(Acquired::Interrupted(signals::number(&info)));
                }
                Event::Signal(_) | Event::Timeout | Event::Again => {}
            }
            if !ours && req.deadline.passed() {
                let first = self.queue(1, call_timeout(req)).ok().and_then(|q| q.into_iter().next());
                ours = first.as_ref().is_some_and(|kv| kv.key == key);
                if ours {
                    first_in_line = true;
                    break;
                } else {
                    giving_up(&lease);
                    req.report.done_waiting();
                    return Ok(Acquired::Busy(
                        first.as_ref().and_then(record_of).or(holder),
                        Vec::new(),
                    ));
                }
            }
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + poll;
                let first = self.queue(1, call_timeout(req)).ok().and_then(|q| q.into_iter().next());
                if first.is_some_and(|kv| kv.key == key) {
                    first_in_line = true;
                    break;
                }
            }
            if let Some(every) = tick.filter(|_| holder.is_some() && Instant::now() >= next_tick) {
                next_tick = Instant::now() + every;
                if let Some(first) = self.queue(1, call_timeout(req)).ok().and_then(|q| q.into_iter().next()) {
                    if first.key != key {
                        holder = record_of(&first).or(holder);
                    }
                }
                if let Some(holder) = &holder {
                    req.report.waiting(holder, Vec::new);
                }
            }
        }
        req.report.done_waiting();
        let locked = if first_in_line {
            Ok(key.clone())
        } else {
            answer
                .recv()
                .map_err(|_| anyhow!("the thread waiting for {} ended without an answer", self.url))?
        };
        if let Err(err) = locked {
            giving_up(&lease);
            return Err(self.failed("take the lock", &err));
        }
        // etcd issue 11456: 3.4 can grant the lock on an expired lease. Our key must
        // still be there, with our lease and create revision. After a wait, the
        // record gets its `since` as it is checked (a write); without one, `since` is
        // already right and a read checks it.
        let still_ours = if waited {
            record.since = crate::lock::file::now();
            self.client
                .put_if_ours(&key, &record.to_line(), revision, lease.id, call_timeout(req))
        } else {
            self.client
                .get(&key, call_timeout(req))
                .map(|kv| kv.is_some_and(|kv| kv.lease == lease.id && kv.create_revision == revision))
        };
        match still_ours {
            Ok(true) => {}
            Ok(false) => {
                giving_up(&lease);
                bail!(
                    "lock lost: etcd granted {} on a lease that had expired (etcd issue 11456); nothing was run; \
                     check the network to etcd at {} and try again",
                    self.url,
                    self.client.shown_endpoints()
                );
            }
            Err(err) => {
                giving_up(&lease);
                return Err(self.failed("check the lock after taking it", &err));
            }
        }
        req.report.acquired(waited.then(|| req.deadline.elapsed()));
        Ok(Acquired::Held(Held {
            client: Arc::clone(&self.client),
            lease,
            key,
            name: self.name.clone(),
            nonce: record.nonce,
            token: revision,
            checked: Cell::new(Instant::now()),
            lost: Cell::new(false),
        }))
    }

    fn nested(&self, inherited: &Inherited) -> Result<Option<Record>> {
        let first = self.queue(1, CALL_TIMEOUT)?;
        Ok(first
            .first()
            .and_then(record_of)
            .filter(|record| inherited.holds(&record.nonce)))
    }

    fn inspect(&self, _me: &Identity, _stale_after: Duration) -> Result<State> {
        let queue = self.queue(0, CALL_TIMEOUT)?;
        let Some(first) = queue.first() else {
            return Ok(State::Free);
        };
        // The first key holds the lock; the others wait, in line. Keys that are not
        // xlock's records (etcdctl lock) are in line too, but only a holder is named.
        let waiters: Vec<Holder> = queue
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(position, kv)| {
                record_of(kv).map(|record| Holder {
                    record,
                    state: HolderState::Waiting { position },
                })
            })
            .collect();
        Ok(match record_of(first) {
            Some(record) => State::Holders(
                std::iter::once(Holder {
                    record,
                    state: HolderState::Held { orphans: Vec::new() },
                })
                .chain(waiters)
                .collect(),
            ),
            None => State::HeldByOther(
                format!(
                    "key {}, lease {:x}, create revision {}",
                    String::from_utf8_lossy(&first.key).escape_default(),
                    first.lease,
                    first.create_revision
                ),
                waiters,
            ),
        })
    }
}
