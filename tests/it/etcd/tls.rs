//! TLS (`etcds://`) and authentication through etcdctl's variables (SPEC §10), with a
//! CA and certificates made for the test by the openssl command; refused TLS and
//! refused credentials fail in one line naming the endpoint.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::*;

/// Makes `ca.pem`, and `NAME.pem` + `NAME.key` signed by it for `server` and
/// `client`, in `dir` (EC keys: quick to make).
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|err| panic!("cannot run openssl ({err}); install it: apt-get install openssl"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=xlock test CA",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for name in ["server", "client"] {
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
    }
}

/// `xlock ARGS` with etcdctl's TLS variables for the certificates in `dir`.
fn with_tls(dir: &Path, args: &[&str]) -> Command {
    let mut command = xlock(args);
    command
        .env("ETCDCTL_CACERT", dir.join("ca.pem"))
        .env("ETCDCTL_CERT", dir.join("client.pem"))
        .env("ETCDCTL_KEY", dir.join("client.key"));
    command
}

#[test]
fn etcds_urls_use_tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let ports = free_ports(2);
    let setup = Setup {
        cluster: Some((format!("tls=http://127.0.0.1:{}", ports[1]), ports[1])),
        tls: Some((
            certs.path().join("server.pem"),
            certs.path().join("server.key"),
            certs.path().join("ca.pem"),
        )),
    };
    let etcd = Etcd::spawn("tls", ports[0], &setup);
    let url = format!("etcds://{}/secure", etcd.endpoint());
    wait_until(Duration::from_secs(20), "etcd answers over TLS", || {
        with_tls(certs.path(), &["--status", &url])
            .output()
            .unwrap()
            .status
            .code()
            == Some(0)
    });
    let out = with_tls(certs.path(), &[&url, "sh", "-c", "echo token $XLOCK_TOKEN"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("token "));
    // A server certificate from a CA that is not trusted: refused, in one line.
    let out = with_tls(certs.path(), &[&url, "true"])
        .env_remove("ETCDCTL_CACERT")
        .output()
        .unwrap();
    assert_fails(&out, &[&etcd.endpoint(), "cannot grant a lease"]);
    // No client certificate: the server refuses.
    let out = with_tls(certs.path(), &[&url, "true"])
        .env_remove("ETCDCTL_CERT")
        .env_remove("ETCDCTL_KEY")
        .output()
        .unwrap();
    assert_fails(&out, &[&etcd.endpoint()]);
    // A CA file that is not there.
    let out = with_tls(certs.path(), &[&url, "true"])
        .env("ETCDCTL_CACERT", "/nonexistent/ca.pem")
        .output()
        .unwrap();
    assert_fails(&out, &["ETCDCTL_CACERT", "/nonexistent/ca.pem"]);
}

#[test]
fn etcdctl_user_authenticates_and_a_wrong_password_is_refused() {
    let etcd = Etcd::start();
    let port = etcd.client_port;
    for (path, body) in [
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        ("/v3/auth/user/add", r#"{"name":"root","password":"secret"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let answer = post(port, path, body).unwrap_or_default();
        assert!(!answer.contains("\"error\""), "{path}: {answer}");
    }
    let url = etcd.url("authjob");
    let out = xlock([url.as_str(), "true"])
        .env("ETCDCTL_USER", "root:secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = xlock([url.as_str(), "true"])
        .env("ETCDCTL_USER", "root:wrong")
        .output()
        .unwrap();
    assert_fails(&out, &[&etcd.endpoint(), "authentication failed", "ETCDCTL_USER"]);
    let out = xlock([url.as_str(), "true"])
        .env_remove("ETCDCTL_USER")
        .output()
        .unwrap();
    assert_fails(&out, &[&url, "ETCDCTL_USER"]);
}
