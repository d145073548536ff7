//! A loopback HTTP proxy in front of moto that counts the AWS calls passing
//! through it, for tests of another process (the `bluegreen` binary) whose
//! SDK clients a test cannot wrap: point the process's endpoint at
//! [`CountingProxy::endpoint`] and read [`CountingProxy::calls`].
//!
//! Requests are parsed only as far as needed to name their operation (the
//! `x-amz-target` header, or the `Action=` parameter of a query-protocol
//! body) and forwarded byte for byte on a connection of their own to moto;
//! answers are copied back unchanged. The AWS SDK sends bodies with a
//! `content-length`; a chunked request fails the test.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{operation_from, CallLog};

/// A running proxy; it stops with the runtime that started it.
#[derive(Debug, Clone)]
pub struct CountingProxy {
    endpoint: String,
    calls: CallLog,
}

impl CountingProxy {
    /// Starts a proxy on a free loopback port that forwards to `upstream`
    /// (`http://HOST:PORT`, e.g. [`endpoint`](super::endpoint)).
    pub async fn start(upstream: &str) -> CountingProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the counting proxy");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let calls = CallLog::default();
        let log = calls.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream.clone(), log.clone()));
            }
        });
        CountingProxy { endpoint, calls }
    }

    /// The endpoint URL to give the process under test.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The calls counted so far, per operation (e.g. `ecs:UpdateService`).
    pub fn calls(&self) -> &CallLog {
        &self.calls
    }
}

/// Relays one client connection: each request is counted, then sent on the
/// connection to `upstream`; everything upstream answers goes back as is.
async fn relay(client: TcpStream, upstream: String, log: CallLog) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // One request: its head, then `content-length` bytes of body.
        let head_end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match client_read.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    let _ = server_write.shutdown().await;
                    let _ = answers.await;
                    return;
                }
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        assert!(
            header("transfer-encoding").is_none(),
            "the counting proxy expects requests with a content-length: {head}"
        );
        let length: usize = header("content-length")
            .map(|v| v.parse().expect("a numeric content-length"))
            .unwrap_or(0);
        while pending.len() < head_end + length {
            match client_read.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        }
        let body = &pending[head_end..head_end + length];
        log.record(operation_from(header("x-amz-target").as_deref(), body));
        if server_write
            .write_all(&pending[..head_end + length])
            .await
            .is_err()
        {
            return;
        }
        pending.drain(..head_end + length);
    }
}
