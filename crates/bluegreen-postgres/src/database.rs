//! Where the database is and how to reach it: a connection URL, TLS through
//! rustls, and a label for messages that never contains the password.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::{ErrorKind, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Client;

use crate::error::{err, map_pg, redact};

/// The default time allowed to open a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the connection is protected, as libpq's `sslmode` names it.
///
/// bluegreen never sends a password over a connection it has not verified,
/// so two of libpq's modes mean more here than they do in libpq:
///
/// | `sslmode` | here | libpq |
/// |---|---|---|
/// | absent | [`VerifyFull`](Self::VerifyFull) | `prefer` |
/// | `disable` | no TLS; loopback hosts and Unix sockets only, unless [`Database::allow_plaintext`] | no TLS |
/// | `allow`, `prefer` | refused: they fall back to plaintext when the server declines TLS | TLS if offered |
/// | `require` | as `verify-ca` | TLS, certificate not checked (unless a root file exists) |
/// | `verify-ca` | TLS, chain verified | same |
/// | `verify-full` | TLS, chain and host name verified | same |
///
/// The chain is verified against `sslrootcert` (a PEM bundle, for example
/// Amazon RDS's `global-bundle.pem`) or, without it or with
/// `sslrootcert=system`, against the system's root certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS (`sslmode=disable`).
    Disable,
    /// TLS required; the certificate chain is verified, the host name is not
    /// (`sslmode=require`: stricter than libpq, which verifies nothing).
    Require,
    /// TLS required; the certificate chain is verified, the host name is not.
    VerifyCa,
    /// TLS required; the certificate chain and the host name are verified.
    /// The default.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Result<TlsMode> {
        Ok(match value {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => {
                return Err(err(
                    ErrorKind::InvalidInput,
                    "connect",
                    format!(
                        "sslmode `{value}` is refused: it falls back to plaintext, and sends the \
                         password unencrypted, when the server declines TLS. Leave sslmode out \
                         (verify-full, the default), or use verify-ca or require (the chain is \
                         verified against sslrootcert or the system roots); plaintext only with \
                         sslmode=disable"
                    ),
                ))
            }
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(err(
                    ErrorKind::InvalidInput,
                    "connect",
                    format!(
                        "sslmode `{other}` is not one of disable, require, verify-ca, verify-full"
                    ),
                ))
            }
        })
    }

    /// The `sslmode` value, as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A PostgreSQL database to connect to.
///
/// Built from a libpq-style URL (`postgres://user:password@host:port/dbname?sslmode=verify-full&sslrootcert=/path/ca.pem`)
/// or key/value string. `Debug`, [`label`](Self::label) and every error show
/// the user, host, port and database, never the password.
///
/// TLS is required and verified unless the URL says `sslmode=disable`; see
/// [`TlsMode`] for what each `sslmode` means here. A plaintext connection
/// is refused, before any byte is sent, to a host that is not loopback
/// unless [`allow_plaintext`](Self::allow_plaintext) says otherwise.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    tls: TlsMode,
    /// Whether `sslmode` was given (errors say "the default" otherwise).
    tls_explicit: bool,
    /// `sslrootcert` as a file; `None` for the system roots.
    root_cert: Option<PathBuf>,
    allow_plaintext: bool,
    label: String,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.label)
            .field("sslmode", &self.tls.as_str())
            .field("sslrootcert", &self.root_cert)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Parses a connection URL or key/value string. `sslmode` defaults to
    /// `verify-full` and means what [`TlsMode`] says; `sslrootcert` is a PEM
    /// file of CA certificates, or `system` for the system's roots (the
    /// default). The connect timeout defaults to [`DEFAULT_CONNECT_TIMEOUT`].
    ///
    /// Fails with [`ErrorKind::InvalidInput`] on a malformed string, and on
    /// `sslmode=prefer` or `allow` (they fall back to plaintext); the
    /// message never repeats the string (it may hold a password).
    ///
    /// In a URL, the credentials end at the last `@` before the host, so a
    /// password with an unencoded `@` (`postgres://app:p@ss@db/orders`) is
    /// read as the password `p@ss`, never as part of the host (which would
    /// put the rest of the password in the label and in errors).
    pub fn from_url(url: &str) -> Result<Database> {
        let url = encode_at_in_credentials(url);
        let (rest, ssl) = take_tls_params(&url);
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                "connect",
                format!("the database connection string is malformed: {e}"),
            )
        })?;
        let tls = match &ssl.mode {
            Some(m) => TlsMode::parse(m)?,
            None => TlsMode::VerifyFull,
        };
        let root_cert = ssl
            .root_cert
            .filter(|r| r != "system" && !r.is_empty())
            .map(PathBuf::from);
        if let Some(path) = &root_cert {
            // Said when the URL is read, not at the first connection (which
            // may come after the deployment has started).
            if !path.is_file() {
                return Err(err(
                    ErrorKind::InvalidInput,
                    "connect",
                    format!(
                        "sslrootcert {}: no such file (a PEM file of CA certificates, or `system`)",
                        path.display()
                    ),
                ));
            }
        }
        config.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            _ => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("bluegreen");
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        let label = label_of(&config);
        Ok(Database {
            config,
            tls,
            tls_explicit: ssl.mode.is_some(),
            root_cert,
            allow_plaintext: false,
            label,
        })
    }

    /// Allows `sslmode=disable` to a host that is not loopback (the spec's
    /// `allow_plaintext = true`). Without it such a connection is refused
    /// before anything is sent: the password would cross the network in
    /// plaintext. Loopback hosts (`localhost`, `127.0.0.0/8`, `::1`) and
    /// Unix sockets need no permission.
    pub fn allow_plaintext(mut self, allow: bool) -> Database {
        self.allow_plaintext = allow;
        self
    }

    /// Checks the TLS policy without connecting: `Ok` unless the URL says
    /// `sslmode=disable` for a host that is not loopback and plaintext was
    /// not allowed ([`ErrorKind::PermissionDenied`], naming the host and
    /// what would allow it). [`connect`](Self::connect) checks it first.
    pub fn check_tls_policy(&self) -> Result<()> {
        if self.tls != TlsMode::Disable || self.allow_plaintext {
            return Ok(());
        }
        let remote: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .filter_map(|h| match h {
                Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        if remote.is_empty() {
            return Ok(());
        }
        Err(err(
            ErrorKind::PermissionDenied,
            "connect",
            format!(
                "{}: sslmode=disable would send the password in plaintext to {}, which is not a \
                 loopback host; refused unless the spec also says allow_plaintext = true \
                 (better: leave sslmode out for verify-full, and give the server's CA with sslrootcert)",
                self.label,
                remote.join(", ")
            ),
        ))
    }

    /// Whether every host is a Unix socket: no network, so no TLS (as libpq).
    fn unix_only(&self) -> bool {
        let hosts = self.config.get_hosts();
        !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_)))
    }

    /// The TLS policy in force, for messages: `sslmode=verify-full (the
    /// default), roots: the system's`.
    fn policy(&self) -> String {
        let mode = if self.tls_explicit {
            format!("sslmode={}", self.tls)
        } else {
            format!("sslmode={} (the default)", self.tls)
        };
        let roots = match &self.root_cert {
            Some(p) => format!("sslrootcert={}", p.display()),
            None => "the system's root certificates".to_string(),
        };
        match self.tls {
            TlsMode::Disable => mode,
            TlsMode::VerifyFull => {
                format!("{mode}: TLS required, chain and host name verified against {roots}")
            }
            TlsMode::Require | TlsMode::VerifyCa => {
                format!("{mode}: TLS required, chain verified against {roots}")
            }
        }
    }

    /// The same database under another name (`CREATE DATABASE`'d ones, for example).
    pub fn with_dbname(&self, dbname: &str) -> Database {
        let mut d = self.clone();
        d.config.dbname(dbname);
        d.label = label_of(&d.config);
        d
    }

    /// The same database reached with `application_name` set to `name`, as
    /// `pg_stat_activity` shows it.
    pub fn with_application_name(&self, name: &str) -> Database {
        let mut d = self.clone();
        d.config.application_name(name);
        d
    }

    /// `postgres://user@host:port/dbname`: what messages call this database.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
    }

    /// The TLS mode in force.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls
    }

    pub(crate) fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// Opens a connection (TLS as `sslmode` says) and spawns its driver
    /// task. Errors name the database by its [`label`](Self::label), never
    /// with the password.
    pub async fn connect(&self) -> Result<Client> {
        self.connect_for("connect").await
    }

    pub(crate) async fn connect_for(&self, operation: &'static str) -> Result<Client> {
        self.check_tls_policy()?;
        let context = format!("cannot connect to {}", self.label);
        let secret = self.password();
        let policy = self.policy();
        let fix = |e: bluegreen_core::Error| {
            let mut msg = redact(e.message(), secret.as_deref());
            let lower = msg.to_lowercase();
            if lower.contains("certificate") {
                // The usual cause: a server whose CA is private (RDS, a
                // company CA) and a URL that does not name it.
                msg = format!("{msg} ({policy}; if a private CA signed the server's certificate, give it in the URL: sslrootcert=/path/ca.pem, for Amazon RDS the global-bundle.pem AWS publishes)");
            } else if lower.contains("tls") || lower.contains("ssl") {
                msg = format!("{msg} ({policy}; plaintext only with sslmode=disable, and to a host other than loopback only with allow_plaintext = true)");
            }
            bluegreen_core::Error::new(e.kind(), msg)
                .with_status(e.status())
                .with_provider(crate::error::PROVIDER)
                .with_operation(operation)
        };
        if self.tls == TlsMode::Disable || self.unix_only() {
            let mut config = self.config.clone();
            config.ssl_mode(SslMode::Disable);
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| fix(map_pg(e, operation, &context)))?;
            spawn_connection(conn, self.label.clone());
            return Ok(client);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.rustls_config()?);
        let (client, conn) = self
            .config
            .connect(tls)
            .await
            .map_err(|e| fix(map_pg(e, operation, &context)))?;
        spawn_connection(conn, self.label.clone());
        Ok(client)
    }

    fn rustls_config(&self) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(ErrorKind::Other, "connect", format!("TLS setup: {e}")))?;
        let roots = self.roots()?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| {
                err(
                    ErrorKind::InvalidInput,
                    "connect",
                    format!("sslrootcert: {e}"),
                )
            })?;
        Ok(if self.tls == TlsMode::VerifyFull {
            builder.with_webpki_verifier(inner).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        })
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| {
                        err(
                            ErrorKind::InvalidInput,
                            "connect",
                            format!("sslrootcert {}: {e}", path.display()),
                        )
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(err(
                        ErrorKind::InvalidInput,
                        "connect",
                        format!("sslrootcert {} holds no usable certificate", path.display()),
                    ));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default();
                    return Err(err(
                        ErrorKind::InvalidInput,
                        "connect",
                        format!(
                            "{}: no system root certificate could be loaded{why}; install the \
                             system's CA certificates or give the server's CA with sslrootcert",
                            self.policy()
                        ),
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// The libpq environment that makes `pg_dump` reach this database
    /// (the password goes in `PGPASSWORD`, never on a command line).
    pub(crate) fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(h) = self.config.get_hosts().first() {
            env.push((
                "PGHOST",
                match h {
                    Host::Tcp(h) => h.clone(),
                    Host::Unix(p) => p.display().to_string(),
                },
            ));
        }
        if let Some(p) = self.config.get_ports().first() {
            env.push(("PGPORT", p.to_string()));
        }
        if let Some(u) = self.config.get_user() {
            env.push(("PGUSER", u.to_string()));
        }
        if let Some(p) = self.password() {
            env.push(("PGPASSWORD", p));
        }
        env.push(("PGDATABASE", self.dbname().to_string()));
        // libpq's `require` verifies nothing; ours verifies the chain.
        let mode = match self.tls {
            TlsMode::Require => TlsMode::VerifyCa,
            m => m,
        };
        env.push(("PGSSLMODE", mode.as_str().to_string()));
        if self.tls != TlsMode::Disable {
            // libpq before 16 knows no `sslrootcert=system`: name the
            // system's bundle file instead.
            let roots = self
                .root_cert
                .clone()
                .or_else(|| openssl_probe::probe().cert_file);
            if let Some(r) = roots {
                env.push(("PGSSLROOTCERT", r.display().to_string()));
            }
        }
        if let Some(t) = self.config.get_connect_timeout() {
            env.push(("PGCONNECT_TIMEOUT", t.as_secs().max(1).to_string()));
        }
        if let Some(a) = self.config.get_application_name() {
            env.push(("PGAPPNAME", a.to_string()));
        }
        env
    }
}

fn spawn_connection<S, T>(conn: tokio_postgres::Connection<S, T>, label: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target_db = %label, error = %e, "postgres connection ended");
        }
    });
}

/// `localhost`, `127.0.0.0/8` or `::1` (brackets allowed).
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn label_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().or(config.get_user()).unwrap_or("");
    let at = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    format!("postgres://{at}{host}:{port}/{db}")
}

/// Percent-encodes every `@` of a URL's credentials but the last one, which
/// ends them: a host never contains `@`, so in `postgres://app:p@ss@db/x`
/// the password is `p@ss`. libpq and tokio-postgres end the credentials at
/// the first `@` instead and would take `ss@db` for the host. Key/value
/// strings are returned unchanged.
fn encode_at_in_credentials(url: &str) -> String {
    let Some(start) = ["postgres://", "postgresql://"]
        .iter()
        .find(|p| url.starts_with(**p))
        .map(|p| p.len())
    else {
        return url.to_string();
    };
    let rest = &url[start..];
    // The authority ends at the path or the query; a `/` or `?` in the
    // password is not supported unencoded (libpq does not allow it either).
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    match authority.rfind('@') {
        Some(last) if authority[..last].contains('@') => format!(
            "{}{}{}",
            &url[..start],
            authority[..last].replace('@', "%40"),
            &rest[last..]
        ),
        _ => url.to_string(),
    }
}

#[derive(Default)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query or a key/value
/// string (tokio-postgres knows neither `verify-*` nor `sslrootcert`).
fn take_tls_params(url: &str) -> (String, TlsParams) {
    let mut p = TlsParams::default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), p);
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => p.mode = Some(percent_decode(v)),
                "sslrootcert" => p.root_cert = Some(percent_decode(v)),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, p)
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            if let Some(v) = token.strip_prefix("sslmode=") {
                p.mode = Some(v.trim_matches('\'').to_string());
            } else if let Some(v) = token.strip_prefix("sslrootcert=") {
                p.root_cert = Some(v.trim_matches('\'').to_string());
            } else {
                kept.push(token);
            }
        }
        (kept.join(" "), p)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `sslmode=verify-ca` and `require`: the chain must verify, the name need not match.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_are_taken_out_of_the_url() {
        let (rest, p) =
            take_tls_params("postgres://u:pw@h:5/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x");
        assert_eq!(rest, "postgres://u:pw@h:5/db?application_name=x");
        assert_eq!(p.mode.as_deref(), Some("verify-full"));
        assert_eq!(p.root_cert.as_deref(), Some("/tmp/ca.pem"));
    }

    #[test]
    fn the_label_and_debug_never_show_the_password() {
        let d = Database::from_url(
            "postgres://app:hunter2-secret@db.internal:6543/orders?sslmode=require",
        )
        .unwrap();
        assert_eq!(d.label(), "postgres://app@db.internal:6543/orders");
        assert!(!format!("{d:?}").contains("hunter2"));
        assert_eq!(d.tls_mode(), TlsMode::Require);
    }

    #[test]
    fn pg_dump_gets_the_same_tls_policy_as_the_runner() {
        let env = |url: &str| {
            Database::from_url(url)
                .unwrap()
                .libpq_env()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>()
        };
        // The default: verify-full against the system bundle (libpq 15 has
        // no `sslrootcert=system`).
        let d = env("postgres://app:pw@db.internal/orders");
        assert_eq!(d["PGSSLMODE"], "verify-full");
        assert_eq!(
            d.get("PGSSLROOTCERT").map(PathBuf::from),
            openssl_probe::probe().cert_file
        );
        // `require` verifies the chain here, so libpq is told verify-ca.
        let ca = std::env::temp_dir().join(format!("bluegreen-rds-{}.pem", std::process::id()));
        std::fs::write(&ca, "not parsed until a connection").unwrap();
        let r = env(&format!(
            "postgres://app:pw@db.internal/orders?sslmode=require&sslrootcert={}",
            ca.display()
        ));
        std::fs::remove_file(&ca).unwrap();
        assert_eq!(r["PGSSLMODE"], "verify-ca");
        assert_eq!(r["PGSSLROOTCERT"], ca.display().to_string());
        let p = env("postgres://app:pw@127.0.0.1/orders?sslmode=disable");
        assert_eq!(p["PGSSLMODE"], "disable");
        assert!(!p.contains_key("PGSSLROOTCERT"));
    }

    #[test]
    fn an_unknown_sslmode_is_named() {
        let e = Database::from_url("postgres://app:pw@h/db?sslmode=sometimes").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("sslmode `sometimes`"), "{e}");
    }
}
