//! A small synchronous client of etcd's JSON gateway (v3 API over HTTP/1.1, on 3.4
//! and later): the few calls a lock needs, with a timeout on each, trying the
//! endpoints in turn; TLS and authentication as etcdctl's variables say
//! (`ETCDCTL_CACERT`, `ETCDCTL_CERT`, `ETCDCTL_KEY`, `ETCDCTL_USER`).
//!
//! In the gateway's JSON, 64-bit integers are strings, bytes are base64, and fields
//! whose value is zero (or false) are left out. Depends on [`url`](super::url) only.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::url::Url;

/// Variables etcdctl reads, read here the same way.
pub const CACERT_ENV: &str = "ETCDCTL_CACERT";
pub const CERT_ENV: &str = "ETCDCTL_CERT";
pub const KEY_ENV: &str = "ETCDCTL_KEY";
pub const USER_ENV: &str = "ETCDCTL_USER";

/// gRPC's code for "unavailable" (no leader, leader changed): worth another try.
const UNAVAILABLE: i64 = 14;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcError {
    /// No endpoint answered: each endpoint with its reason.
    Unreachable(String),
    /// The server answered with an error (gRPC code, message).
    Server { code: i64, message: String },
}

impl RpcError {
    /// Worth trying again: the network, or a cluster between leaders.
    pub fn is_transient(&self) -> bool {
        match self {
            RpcError::Unreachable(_) => true,
            RpcError::Server { code, .. } => *code == UNAVAILABLE || *code == 4,
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Unreachable(why) => write!(f, "{why}"),
            RpcError::Server { message, .. } => write!(f, "etcd said: {message}"),
        }
    }
}

/// A key-value pair as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub lease: i64,
}

/// One cluster, as one LOCK names it.
pub struct Client {
    agent: ureq::Agent,
    scheme: &'static str,
    endpoints: Vec<String>,
    /// The endpoint that answered last: tried first.
    current: AtomicUsize,
    /// `ETCDCTL_USER`: (name, password).
    user: Option<(String, String)>,
    /// The token `user` got; renewed when the server calls it invalid.
    token: Mutex<Option<String>>,
}

impl Client {
    /// A client for `url`'s endpoints, with TLS and authentication from etcdctl's
    /// variables. Nothing is sent yet.
    pub fn new(url: &Url) -> Result<Client, String> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .user_agent(concat!("xlock/", env!("CARGO_PKG_VERSION")));
        if url.tls {
            config = config.tls_config(tls_config()?);
        } else if let Some(var) = [CACERT_ENV, CERT_ENV, KEY_ENV]
            .into_iter()
            .find(|v| std::env::var_os(v).is_some())
        {
            return Err(format!(
                "{var} is set, but LOCK '{url}' is plain HTTP; use etcds:// for TLS, or unset {var}"
            ));
        }
        let user = match std::env::var(USER_ENV) {
            Ok(text) => match text.split_once(':') {
                Some((name, password)) if !name.is_empty() => Some((name.to_owned(), password.to_owned())),
                _ => return Err(format!("{USER_ENV} must be USER:PASSWORD (as etcdctl --user takes it)")),
            },
            Err(_) => None,
        };
        Ok(Client {
            agent: config.build().into(),
            scheme: if url.tls { "https" } else { "http" },
            endpoints: url.endpoints.clone(),
            current: AtomicUsize::new(0),
            user,
            token: Mutex::new(None),
        })
    }

    /// The endpoints, for messages.
    pub fn shown_endpoints(&self) -> String {
        self.endpoints.join(", ")
    }

    /// Calls `path` with `body`, at most `timeout` in all (`None`: no limit, for the
    /// Lock call that waits its turn), trying each endpoint once, the one that
    /// answered last first, each within its share of the time left. Authenticates first if `ETCDCTL_USER` is set, and again
    /// once if the server calls the token invalid.
    pub fn call(&self, path: &str, body: &Value, timeout: Option<Duration>) -> Result<Value, RpcError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        if self.user.is_some() && self.token.lock().map(|t| t.is_none()).unwrap_or(true) {
            self.authenticate(deadline)?;
        }
        match self.call_once(path, body, deadline) {
            Err(RpcError::Server { message, .. }) if self.user.is_some() && message.contains("invalid auth token") => {
                self.authenticate(deadline)?;
                self.call_once(path, body, deadline)
            }
            other => other,
        }
    }

    fn authenticate(&self, deadline: Option<Instant>) -> Result<(), RpcError> {
        let Some((name, password)) = &self.user else {
            return Ok(());
        };
        if let Ok(mut token) = self.token.lock() {
            *token = None;
        }
        let answer = self
            .call_once(
                "/v3/auth/authenticate",
                &json!({"name": name, "password": password}),
                deadline,
            )
            .map_err(|err| match err {
                RpcError::Server { code, message } => RpcError::Server {
                    code,
                    message: format!("{message} (authenticating as '{name}' from {USER_ENV})"),
                },
                other => other,
            })?;
        let token = answer["token"].as_str().unwrap_or_default().to_owned();
        if let Ok(mut slot) = self.token.lock() {
            *slot = Some(token);
        }
        Ok(())
    }

    fn call_once(&self, path: &str, body: &Value, deadline: Option<Instant>) -> Result<Value, RpcError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        let body = body.to_string();
        for k in 0..self.endpoints.len() {
            let index = (first + k) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let left = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        failures.push(format!("{endpoint}: not tried, out of time"));
                        continue;
                    }
                    // An equal share for each endpoint not tried yet: one that accepts
                    // connections but never answers (a frozen member) must not use up
                    // the time of those after it.
                    Some(left / (self.endpoints.len() - k) as u32)
                }
                None => None,
            };
            let mut request = self
                .agent
                .post(format!("{}://{endpoint}{path}", self.scheme))
                .header("Content-Type", "application/json");
            if let Some(token) = self.token.lock().ok().and_then(|t| t.clone()) {
                request = request.header("Authorization", token);
            }
            let sent = request.config().timeout_global(left).build().send(body.as_str());
            let mut response = match sent {
                Ok(response) => response,
                Err(err) => {
                    failures.push(format!("{endpoint}: {}", transport_reason(&err)));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let text = match response.body_mut().read_to_string() {
                Ok(text) => text,
                Err(err) => {
                    failures.push(format!("{endpoint}: {}", transport_reason(&err)));
                    continue;
                }
            };
            // Not etcd's gateway (a peer port, another server): the next endpoint may be.
            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                failures.push(format!(
                    "{endpoint}: answered {path} with HTTP {status} and not JSON: {}; is it etcd's client port (3.4 or later)?",
                    text.chars().take(120).collect::<String>().escape_default()
                ));
                continue;
            };
            self.current.store(index, Ordering::Relaxed);
            // A streaming call's one answer comes as {"result": …} or {"error": …}.
            let error = value.get("error").filter(|e| e.is_object()).cloned();
            if let Some(error) = error {
                return Err(server_error(&error, status));
            }
            if status != 200 || value.get("error").is_some() {
                return Err(server_error(&value, status));
            }
            return Ok(value.get("result").cloned().unwrap_or(value));
        }
        Err(RpcError::Unreachable(format!(
            "cannot reach etcd ({})",
            failures.join("; ")
        )))
    }

    /// A lease of `ttl` seconds: its ID.
    pub fn grant(&self, ttl: i64, timeout: Duration) -> Result<i64, RpcError> {
        let answer = self.call("/v3/lease/grant", &json!({"TTL": ttl.to_string()}), Some(timeout))?;
        match int(&answer["ID"]) {
            0 => Err(RpcError::Server {
                code: 0,
                message: format!("no lease granted: {}", answer["error"].as_str().unwrap_or("no ID")),
            }),
            id => Ok(id),
        }
    }

    /// Renews lease `id`: the TTL it has now (0: it has expired).
    pub fn keepalive(&self, id: i64, timeout: Duration) -> Result<i64, RpcError> {
        match self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}), Some(timeout)) {
            Ok(answer) => Ok(int(&answer["TTL"])),
            Err(RpcError::Server { message, .. }) if message.contains("lease not found") => Ok(0),
            Err(err) => Err(err),
        }
    }

    /// Revokes lease `id` (its keys go with it); a lease already gone is no error.
    pub fn revoke(&self, id: i64, timeout: Duration) -> Result<(), RpcError> {
        match self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}), Some(timeout)) {
            Err(RpcError::Server { message, .. }) if message.contains("lease not found") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Puts `value` at `key` under lease `lease`: the revision of the put.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64, timeout: Duration) -> Result<i64, RpcError> {
        let body = json!({"key": encode(key), "value": encode(value), "lease": lease.to_string()});
        let answer = self.call("/v3/kv/put", &body, Some(timeout))?;
        Ok(int(&answer["header"]["revision"]))
    }

    /// The key `key`, if it exists.
    pub fn get(&self, key: &[u8], timeout: Duration) -> Result<Option<Kv>, RpcError> {
        let answer = self.call("/v3/kv/range", &json!({"key": encode(key)}), Some(timeout))?;
        Ok(kvs(&answer).into_iter().next())
    }

    /// The keys under `prefix`, oldest first (by create revision), at most `limit` (0: all).
    pub fn range_prefix(&self, prefix: &[u8], limit: i64, timeout: Duration) -> Result<Vec<Kv>, RpcError> {
        let body = json!({
            "key": encode(prefix),
            "range_end": encode(&prefix_end(prefix)),
            "sort_order": "ASCEND",
            "sort_target": "CREATE",
            "limit": limit.to_string(),
        });
        let answer = self.call("/v3/kv/range", &body, Some(timeout))?;
        Ok(kvs(&answer))
    }

    /// The Lock RPC: waits until the lock `name` is ours under lease `lease` (no time
    /// limit: the caller gives up by revoking the lease); our key.
    pub fn lock(&self, name: &[u8], lease: i64) -> Result<Vec<u8>, RpcError> {
        let answer = self.call(
            "/v3/lock/lock",
            &json!({"name": encode(name), "lease": lease.to_string()}),
            None,
        )?;
        Ok(decode(answer["key"].as_str().unwrap_or_default()))
    }

    /// The Unlock RPC: deletes our key.
    pub fn unlock(&self, key: &[u8], timeout: Duration) -> Result<(), RpcError> {
        self.call("/v3/lock/unlock", &json!({"key": encode(key)}), Some(timeout))
            .map(drop)
    }

    /// Puts `value` at `key` under `lease` if the key still has `create_revision` and
    /// that lease (etcd issue 11456): whether it did.
    pub fn put_if_ours(
        &self,
        key: &[u8],
        value: &[u8],
        create_revision: i64,
        lease: i64,
        timeout: Duration,
    ) -> Result<bool, RpcError> {
        let body = json!({
            "compare": [
                {"target": "CREATE", "key": encode(key), "result": "EQUAL", "create_revision": create_revision.to_string()},
                {"target": "LEASE", "key": encode(key), "result": "EQUAL", "lease": lease.to_string()},
            ],
            "success": [{"request_put": {"key": encode(key), "value": encode(value), "lease": lease.to_string()}}],
        });
        match self.call("/v3/kv/txn", &body, Some(timeout)) {
            Ok(answer) => Ok(answer["succeeded"].as_bool().unwrap_or(false)),
            Err(RpcError::Server { message, .. }) if message.contains("lease not found") => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// The keys of a range's answer.
fn kvs(answer: &Value) -> Vec<Kv> {
    let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
    kvs.iter()
        .map(|kv| Kv {
            key: decode(kv["key"].as_str().unwrap_or_default()),
            value: decode(kv["value"].as_str().unwrap_or_default()),
            create_revision: int(&kv["create_revision"]),
            lease: int(&kv["lease"]),
        })
        .collect()
}

/// A gRPC error as the gateway writes it: `{"error": "...", "code": N, "message": "..."}`.
fn server_error(error: &Value, status: u16) -> RpcError {
    let message = error["message"]
        .as_str()
        .or_else(|| error["error"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    RpcError::Server {
        code: error["code"].as_i64().unwrap_or(0),
        message,
    }
}

/// A transport error in words: refused, timed out, TLS.
fn transport_reason(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Timeout(_) => "no answer in time (timed out)".to_owned(),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// TLS as etcdctl's variables say: the CA to trust, and a client certificate.
fn tls_config() -> Result<ureq::tls::TlsConfig, String> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let read = |var: &str| -> Result<Option<(String, Vec<u8>)>, String> {
        let Some(path) = std::env::var_os(var) else {
            return Ok(None);
        };
        let shown = path.to_string_lossy().into_owned();
        let bytes = std::fs::read(&path)
            .map_err(|err| format!("cannot read {var} file '{shown}': {}", crate::error::io_reason(&err)))?;
        Ok(Some((shown, bytes)))
    };
    let certs = |var: &str, shown: &str, pem: &[u8]| -> Result<Vec<Certificate<'static>>, String> {
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(cert)) => Some(cert),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(format!("{var} file '{shown}' has no PEM certificate; give a PEM file"));
        }
        Ok(certs)
    };
    let mut builder = TlsConfig::builder();
    if let Some((shown, pem)) = read(CACERT_ENV)? {
        builder = builder.root_certs(RootCerts::new_with_certs(&certs(CACERT_ENV, &shown, &pem)?));
    }
    match (read(CERT_ENV)?, read(KEY_ENV)?) {
        (Some((cert_shown, cert)), Some((key_shown, key))) => {
            let chain = certs(CERT_ENV, &cert_shown, &cert)?;
            let key = PrivateKey::from_pem(&key).map_err(|err| {
                format!(
                    "{KEY_ENV} file '{key_shown}' has no usable PEM private key ({err}); give the key of {CERT_ENV}"
                )
            })?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        _ => return Err(format!("{CERT_ENV} and {KEY_ENV} go together; set both or neither")),
    }
    Ok(builder.build())
}

/// An int64 as the gateway writes it (a string; absent when 0).
pub fn int(value: &Value) -> i64 {
    match value {
        Value::String(text) => text.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys that start with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 (standard, padded), as the gateway takes bytes.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64 back to bytes; characters outside the alphabet are skipped.
pub fn decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut n, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else {
            continue;
        };
        n = n << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\xff\x00\xfe", "/wD+"),
        ] {
            assert_eq!(encode(bytes), text);
            assert_eq!(decode(text), bytes);
        }
    }

    #[test]
    fn a_prefix_ends_where_its_keys_do() {
        assert_eq!(prefix_end(b"job/"), b"job0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn integers_come_as_strings_or_not_at_all() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&Value::Null), 0);
        assert_eq!(int(&json!(7)), 7);
    }
}
