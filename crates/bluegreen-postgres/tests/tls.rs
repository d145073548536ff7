//! TLS by default (issue "secure by default", item 1): a password never
//! crosses the network in plaintext unless the URL says `sslmode=disable`,
//! and then only to a loopback host or with `allow_plaintext`; a
//! certificate is always verified. Against a fake server that declines TLS
//! and the real server scripts/test starts (which serves TLS signed by a
//! private CA, and also accepts plaintext on loopback).

mod common;

use std::time::Duration;

use bluegreen_core::ErrorKind;
use bluegreen_postgres::{Database, TlsMode};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PASSWORD: &str = "hunter2-Secret-7q";

/// A server that declines TLS (answers `N` to the SSLRequest), then asks
/// for the password in clear text as an old or hostile server would. It
/// returns every byte the client sent.
async fn plaintext_server() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // The SSLRequest: length 8, code 80877103.
        let n = read(&mut sock, &mut buf).await;
        seen.extend_from_slice(&buf[..n]);
        if seen.len() == 8 && seen[4..8] == 80877103u32.to_be_bytes() {
            sock.write_all(b"N").await.unwrap();
            let n = read(&mut sock, &mut buf).await;
            seen.extend_from_slice(&buf[..n]);
        }
        if n_is_startup(&seen) {
            // AuthenticationCleartextPassword.
            let _ = sock.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
            let n = read(&mut sock, &mut buf).await;
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });
    (port, task)
}

/// One read of at most 4 KiB, or 0 after 2 s of silence.
async fn read(sock: &mut tokio::net::TcpStream, buf: &mut [u8; 4096]) -> usize {
    tokio::time::timeout(Duration::from_secs(2), sock.read(buf))
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(0)
}

/// Whether the bytes after the SSLRequest (or from the start) hold a
/// StartupMessage (protocol 3.0).
fn n_is_startup(seen: &[u8]) -> bool {
    seen.windows(4).any(|w| w == 196608u32.to_be_bytes())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_declines_tls_never_receives_the_password() {
    for query in [
        "",
        "?sslmode=require",
        "?sslmode=verify-ca",
        "?sslmode=verify-full",
    ] {
        let (port, server) = plaintext_server().await;
        let db = Database::from_url(&format!(
            "postgres://deployer:{PASSWORD}@127.0.0.1:{port}/orders{query}"
        ))
        .unwrap();
        let err = db.connect().await.unwrap_err();
        let seen = server.await.unwrap();
        assert_eq!(
            seen.len(),
            8,
            "{query:?}: only the SSLRequest was sent, saw {seen:?}"
        );
        assert!(
            !contains(&seen, PASSWORD),
            "{query:?}: the password was sent"
        );
        let msg = err.to_string();
        assert!(msg.contains("does not support TLS"), "{query:?}: {msg}");
        let expected = if query.is_empty() {
            "sslmode=verify-full (the default)".to_string()
        } else {
            format!("sslmode={}", &query["?sslmode=".len()..])
        };
        assert!(msg.contains(&expected), "{query:?}: {msg}");
        assert!(msg.contains("sslmode=disable"), "{msg}");
        assert!(!msg.contains(PASSWORD), "{msg}");
    }

    // The fake server does catch a password that is sent: with an explicit
    // sslmode=disable to loopback (allowed), the client hands it over.
    let (port, server) = plaintext_server().await;
    let db = Database::from_url(&format!(
        "postgres://deployer:{PASSWORD}@127.0.0.1:{port}/orders?sslmode=disable"
    ))
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), db.connect()).await;
    let seen = server.await.unwrap();
    assert!(contains(&seen, PASSWORD), "the fake server saw {seen:?}");
}

#[test]
fn prefer_and_allow_are_refused_because_they_fall_back_to_plaintext() {
    for mode in ["prefer", "allow"] {
        let err = Database::from_url(&format!(
            "postgres://deployer:{PASSWORD}@db.internal/orders?sslmode={mode}"
        ))
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("sslmode `{mode}` is refused")),
            "{msg}"
        );
        assert!(msg.contains("plaintext"), "{msg}");
        assert!(!msg.contains(PASSWORD), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_host_that_is_not_loopback_is_refused_before_anything_is_sent() {
    let db = Database::from_url(&format!(
        "postgres://deployer:{PASSWORD}@db.example.internal:5432/orders?sslmode=disable"
    ))
    .unwrap();
    let err = db.check_tls_policy().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let msg = err.to_string();
    assert!(msg.contains("db.example.internal"), "{msg}");
    assert!(msg.contains("allow_plaintext = true"), "{msg}");
    assert!(msg.contains("not a loopback host"), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");
    // connect refuses the same way, at once (no name lookup, no socket).
    let started = std::time::Instant::now();
    let err = db.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("allow_plaintext"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    assert!(db.clone().allow_plaintext(true).check_tls_policy().is_ok());
    for host in ["localhost", "127.0.0.1", "127.9.9.9", "[::1]"] {
        let d = Database::from_url(&format!(
            "postgres://deployer:{PASSWORD}@{host}:5432/orders?sslmode=disable"
        ))
        .unwrap();
        assert!(d.check_tls_policy().is_ok(), "{host}");
    }
    // Every host counts.
    let mixed = Database::from_url(&format!(
        "host=127.0.0.1,db.example.internal user=deployer password={PASSWORD} sslmode=disable"
    ))
    .unwrap();
    assert!(mixed.check_tls_policy().is_err());
}

/// Whether the connection `db` opens is encrypted, as the server sees it.
async fn ssl_in_use(db: &Database) -> bluegreen_core::Result<bool> {
    let c = db.connect().await?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_is_tls_verified_against_sslrootcert_on_the_real_server() {
    let plain = plain_server_url();
    let ca = server_ca();
    // No sslmode: verify-full. The certificate names localhost and 127.0.0.1.
    for url in [
        format!("{plain}?sslrootcert={ca}"),
        format!(
            "{}?sslrootcert={ca}",
            plain.replace("@127.0.0.1:", "@localhost:")
        ),
        format!("{plain}?sslmode=verify-ca&sslrootcert={ca}"),
        format!("{plain}?sslmode=require&sslrootcert={ca}"),
    ] {
        let db = Database::from_url(&url).unwrap();
        assert!(ssl_in_use(&db).await.unwrap(), "{}", db.label());
    }
    assert_eq!(
        Database::from_url(&plain).unwrap().tls_mode(),
        TlsMode::VerifyFull
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_roots_do_not_trust_is_refused_in_every_tls_mode() {
    let plain = plain_server_url();
    // The private CA is not among the system's roots.
    for (query, says) in [
        ("", "sslmode=verify-full (the default)"),
        ("?sslmode=require", "sslmode=require"),
        ("?sslmode=verify-ca", "sslmode=verify-ca"),
        ("?sslrootcert=system", "sslmode=verify-full (the default)"),
    ] {
        let db = Database::from_url(&format!("{plain}{query}")).unwrap();
        let err = db.connect().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{query}: {err}");
        let msg = err.to_string();
        assert!(msg.to_lowercase().contains("certificate"), "{msg}");
        assert!(msg.contains(says), "{query}: {msg}");
        assert!(msg.contains("the system's root certificates"), "{msg}");
        assert!(msg.contains("give it in the URL: sslrootcert="), "{msg}");
        assert!(!msg.contains("bluegreen-test-only"), "{msg}");
    }
}

#[test]
fn an_sslrootcert_that_does_not_exist_is_refused_when_the_url_is_read() {
    let err = Database::from_url(&format!(
        "postgres://deployer:{PASSWORD}@db.internal/orders?sslrootcert=/etc/nope/ca.pem"
    ))
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let msg = err.to_string();
    assert!(
        msg.contains("sslrootcert /etc/nope/ca.pem: no such file"),
        "{msg}"
    );
    assert!(!msg.contains(PASSWORD), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    // Reach the real server at 127.0.0.1 under a name its certificate does
    // not carry (`hostaddr` connects, `host` is what TLS checks).
    let plain = plain_server_url();
    let ca = server_ca();
    let renamed = plain.replace("@127.0.0.1:", "@not-the-server.test:");
    let full =
        Database::from_url(&format!("{renamed}?hostaddr=127.0.0.1&sslrootcert={ca}")).unwrap();
    let err = full.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("host name verified"), "{err}");
    let chain_only = Database::from_url(&format!(
        "{renamed}?hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={ca}"
    ))
    .unwrap();
    assert!(ssl_in_use(&chain_only).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_reaches_the_real_server_only_as_allowed() {
    let plain = plain_server_url();
    // Loopback: allowed with an explicit sslmode=disable.
    let db = Database::from_url(&format!("{plain}?sslmode=disable")).unwrap();
    assert!(!ssl_in_use(&db).await.unwrap());

    // Another name for the same server: refused, then allowed on purpose.
    let renamed = plain.replace("@127.0.0.1:", "@db.example.internal:");
    let db = Database::from_url(&format!("{renamed}?hostaddr=127.0.0.1&sslmode=disable")).unwrap();
    let err = db.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let db = db.allow_plaintext(true);
    assert!(!ssl_in_use(&db).await.unwrap());
}
