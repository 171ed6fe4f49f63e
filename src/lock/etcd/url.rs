//! An etcd LOCK (SPEC §10), parsed and checked on the command line before anything
//! is acted on: `etcd://HOST:PORT[,HOST:PORT...]/NAME`, `etcd:///NAME` (endpoints
//! from `ETCDCTL_ENDPOINTS`, as etcdctl reads them), `etcds://` for TLS.
//!
//! A leaf module: no I/O but the one environment variable, no network.

use std::fmt;
use std::time::Duration;

/// The variable `etcd:///NAME` takes its endpoints from (as etcdctl does).
pub const ENDPOINTS_ENV: &str = "ETCDCTL_ENDPOINTS";

/// etcd's client port, when an endpoint names none.
const DEFAULT_PORT: u16 = 2379;

/// The shortest lease TTL (`--stale-after`) an etcd LOCK takes: room for renewals and
/// a kill before expiry (etcd's own minimum with default settings is about 2 s).
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// `--stale-after` for an etcd LOCK: the lease's TTL, at least [`MIN_TTL`].
pub fn check_ttl(stale_after: Duration) -> Result<(), String> {
    if stale_after < MIN_TTL {
        return Err(format!(
            "--stale-after {} is too short for an etcd lease: its TTL is --stale-after, renewed every third; \
             use at least {}s (default 30s)",
            humantime::format_duration(stale_after),
            MIN_TTL.as_secs()
        ));
    }
    Ok(())
}

/// A checked etcd LOCK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The URL as given: the lock's name for messages, `XLOCK_PATH` and `XLOCK_HELD`.
    pub text: String,
    /// `etcds://` (or an `https://` endpoint in `ETCDCTL_ENDPOINTS`).
    pub tls: bool,
    /// `HOST:PORT`, in the order given: tried in turn.
    pub endpoints: Vec<String>,
    /// The lock's name in etcd: its waiters' keys are `NAME/<lease id in hex>`.
    pub name: String,
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether LOCK is meant as an etcd URL (then it is parsed as one, never a path).
pub fn is_etcd(lock: &[u8]) -> bool {
    lock.starts_with(b"etcd://") || lock.starts_with(b"etcds://")
}

impl Url {
    /// Parses an etcd LOCK (`is_etcd` said it is one); `Err` is a one-line message
    /// naming what is wrong and what to write instead.
    pub fn parse(text: &str) -> Result<Url, String> {
        Url::parse_with(text, std::env::var(ENDPOINTS_ENV).ok().as_deref())
    }

    /// [`Url::parse`] with `ETCDCTL_ENDPOINTS` given (for tests).
    pub fn parse_with(text: &str, env_endpoints: Option<&str>) -> Result<Url, String> {
        let example = "etcd://HOST:PORT[,HOST:PORT...]/NAME, etcd:///NAME or etcds://HOST:PORT/NAME";
        let (tls, rest) = if let Some(rest) = text.strip_prefix("etcds://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("etcd://") {
            (false, rest)
        } else {
            return Err(format!("LOCK '{text}' is not an etcd URL; write {example}"));
        };
        let Some((hosts, name)) = rest.split_once('/') else {
            return Err(format!(
                "etcd LOCK '{text}' has no lock name; write {example} (e.g. etcd://127.0.0.1:2379/deploy)"
            ));
        };
        if name.is_empty() || name.ends_with('/') {
            return Err(format!(
                "etcd LOCK '{text}' has an empty lock name (after the endpoints' '/'); write {example} (e.g. etcd://127.0.0.1:2379/deploy)"
            ));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(format!(
                "etcd LOCK '{}' has a control character ({}) in its name; use printable characters",
                text.escape_default(),
                c.escape_default()
            ));
        }
        let mut tls = tls;
        let endpoints = if hosts.is_empty() {
            let Some(env) = env_endpoints.filter(|e| !e.trim().is_empty()) else {
                return Err(format!(
                    "etcd LOCK '{text}' names no endpoints, and {ENDPOINTS_ENV} is not set; \
                     set {ENDPOINTS_ENV}=HOST:PORT[,HOST:PORT...] or name them: etcd://HOST:PORT/{name}"
                ));
            };
            let mut endpoints = Vec::new();
            for word in env.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                let (https, hostport) = if let Some(rest) = word.strip_prefix("https://") {
                    (true, rest)
                } else if let Some(rest) = word.strip_prefix("http://") {
                    (false, rest)
                } else {
                    (tls, word)
                };
                if !https && text.starts_with("etcds://") {
                    return Err(format!(
                        "{ENDPOINTS_ENV} has the plain-HTTP endpoint '{word}', but LOCK '{text}' asks for TLS; \
                         use https:// endpoints or etcd:///{name}"
                    ));
                }
                tls |= https;
                endpoints.push(
                    endpoint(hostport.trim_end_matches('/'))
                        .map_err(|why| format!("{ENDPOINTS_ENV} endpoint '{word}' {why}"))?,
                );
            }
            if endpoints.is_empty() {
                return Err(format!(
                    "{ENDPOINTS_ENV}='{}' lists no endpoints; set {ENDPOINTS_ENV}=HOST:PORT[,HOST:PORT...] \
                     or name them: etcd://HOST:PORT/{name}",
                    env.escape_default()
                ));
            }
            endpoints
        } else {
            hosts
                .split(',')
                .map(|word| endpoint(word).map_err(|why| format!("etcd LOCK '{text}': endpoint '{word}' {why}")))
                .collect::<Result<_, _>>()?
        };
        Ok(Url {
            text: text.to_owned(),
            tls,
            endpoints,
            name: name.to_owned(),
        })
    }

    /// The endpoints, for messages: `127.0.0.1:2379, 10.0.0.2:2379`.
    pub fn shown_endpoints(&self) -> String {
        self.endpoints.join(", ")
    }
}

/// `HOST[:PORT]` or `[V6]:PORT`, checked; the port defaults to etcd's.
fn endpoint(word: &str) -> Result<String, String> {
    let what = "is not HOST:PORT (e.g. 10.0.0.5:2379)";
    if word.is_empty() {
        return Err(format!("is empty; {what}"));
    }
    let (host, port) = if let Some(v6) = word.strip_prefix('[') {
        let Some((host, rest)) = v6.split_once(']') else {
            return Err(format!("has no closing ']'; {what}"));
        };
        match rest.strip_prefix(':') {
            Some(port) => (format!("[{host}]"), Some(port)),
            None if rest.is_empty() => (format!("[{host}]"), None),
            None => return Err(what.to_owned()),
        }
    } else {
        match word.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (word.to_owned(), None),
        }
    };
    // A name or IPv4 address; in brackets, an IPv6 address (with its zone after '%').
    let valid_host = |h: &str| match h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.contains(':')
                && v6
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%'))
        }
        None => {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !valid_host(&host) {
        if host.contains(':') && !host.starts_with('[') {
            return Err(format!("{what}; an IPv6 address goes in brackets: [::1]:2379"));
        }
        return Err(what.to_owned());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("has the port '{port}', not a number from 1 to 65535")),
        },
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_endpoints_and_a_lock() {
        let url = Url::parse_with("etcd://10.0.0.1:2379,node2/ci/deploy", None).unwrap();
        assert_eq!(url.endpoints, ["10.0.0.1:2379", "node2:2379"]);
        assert_eq!(url.name, "ci/deploy");
        assert!(!url.tls);
        let url = Url::parse_with("etcds://[::1]:2380/x", None).unwrap();
        assert_eq!(url.endpoints, ["[::1]:2380"]);
        assert!(url.tls);
    }

    #[test]
    fn endpoints_may_come_from_the_environment() {
        let url = Url::parse_with("etcd:///job", Some("http://a:1, https://b:2/")).unwrap();
        assert_eq!(url.endpoints, ["a:1", "b:2"]);
        assert!(url.tls, "an https:// endpoint means TLS");
        let err = Url::parse_with("etcd:///job", None).unwrap_err();
        assert!(err.contains("ETCDCTL_ENDPOINTS is not set"), "{err}");
        for blank in [",", " , ,", "http://"] {
            let err = Url::parse_with("etcd:///job", Some(blank)).unwrap_err();
            assert!(
                err.contains("lists no endpoints") || err.contains("is empty"),
                "{blank:?}: {err}"
            );
        }
        let err = Url::parse_with("etcds:///job", Some("http://a:1")).unwrap_err();
        assert!(err.contains("plain-HTTP"), "{err}");
    }

    #[test]
    fn a_lease_shorter_than_two_seconds_is_refused() {
        assert!(check_ttl(Duration::from_secs(2)).is_ok());
        let err = check_ttl(Duration::from_millis(1500)).unwrap_err();
        assert!(
            err.contains("--stale-after 1s 500ms is too short") && err.contains("at least 2s"),
            "{err}"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("etcd://host:2379", "no lock name"),
            ("etcd://host:2379/", "empty lock name"),
            ("etcd://host:99999/x", "not a number from 1 to 65535"),
            ("etcd://host:0/x", "not a number from 1 to 65535"),
            ("etcd://,h:1/x", "is empty"),
            ("etcd://ho st:1/x", "is not HOST:PORT"),
            ("etcd://h:1/a\nb", "control character"),
            ("etcd://::1:2379/x", "an IPv6 address goes in brackets"),
            ("etcd://10.0.0.1:2379:5/x", "an IPv6 address goes in brackets"),
            ("etcd://[nothex]:2379/x", "is not HOST:PORT"),
        ] {
            let err = Url::parse_with(url, None).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
