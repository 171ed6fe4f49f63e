//! The etcd lock (SPEC §10): `xlock etcd://HOST:PORT[,HOST:PORT...]/NAME -- CMD`, for
//! jobs on many machines, on etcd's lease and lock API through its JSON gateway.
//!
//! Nothing here runs unless LOCK is an etcd URL: a file lock's run never builds a
//! client, a thread or a TLS configuration. The files, one concern each, each
//! depending only on those listed before it:
//! - [`url`]: the LOCK URL parsed and checked (endpoints, TLS, NAME), on the command line.
//! - [`client`]: the HTTP/JSON client: the calls, their timeouts, endpoints in turn, TLS, auth.
//! - [`lease`]: our lease, renewed every third of its TTL on a thread; held or lost.
//! - [`held`]: the held lock: supervision's guard, `XLOCK_TOKEN`, release.
//! - [`kind`]: the [`Kind`](super::Kind): acquire and wait, nesting, `--status`.

mod client;
mod held;
mod kind;
mod lease;
pub mod url;

pub use self::kind::EtcdLock;
pub use self::url::Url;
