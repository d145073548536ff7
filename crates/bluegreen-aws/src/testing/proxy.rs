//! A loopback HTTP proxy in front of moto that counts the AWS calls passing
//! through it, and can inject the faults a real AWS endpoint shows and moto
//! does not: a reply lost after AWS applied the call, and throttling.
//!
//! It serves tests of another process (the `bluegreen` binary) whose SDK
//! clients a test cannot wrap: point the process's endpoint at
//! [`CountingProxy::endpoint`] and read [`CountingProxy::calls`]; and tests
//! that must see what the providers do when a reply never comes
//! ([`CountingProxy::lose_reply`] for a caller that dies then,
//! [`CountingProxy::lose_reply_and_go_on`] for one that lives on) or AWS
//! throttles ([`CountingProxy::throttle`]).
//!
//! Requests are parsed only as far as needed to name their operation (the
//! `x-amz-target` header, or the `Action=` parameter of a query-protocol
//! body). Each is forwarded byte for byte on a connection of its own to moto,
//! whose whole answer is read before it is copied back unchanged; the client
//! connection is closed after each answer (moto closes its own). The AWS SDK
//! sends bodies with a `content-length`; a chunked request fails the test.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{operation_from, CallLog};

/// A running proxy; it stops with the runtime that started it.
#[derive(Debug, Clone)]
pub struct CountingProxy {
    endpoint: String,
    state: Arc<State>,
}

/// Throttling the proxy answers instead of forwarding, see
/// [`CountingProxy::throttle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Every `every`-th call the proxy receives (counting all operations, the
    /// throttled ones included) is throttled: 2 throttles half of all calls.
    pub every: u32,
    /// The `Retry-After` header (whole seconds) the throttling answers carry.
    pub retry_after: Option<Duration>,
}

/// A reply the proxy will lose, from [`CountingProxy::lose_reply`].
#[derive(Debug, Clone)]
pub struct LostReply {
    fired: watch::Receiver<bool>,
}

impl LostReply {
    /// Whether the call was made, applied by moto, and its reply dropped.
    pub fn has_fired(&self) -> bool {
        *self.fired.borrow()
    }

    /// Waits until the reply was lost (at once if it already was).
    pub async fn fired(&self) {
        let mut fired = self.fired.clone();
        // The sender lives as long as the proxy's state, which outlives
        // every relay; an error means the proxy is gone and nothing fires.
        if fired.wait_for(|f| *f).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[derive(Debug)]
struct State {
    upstream: String,
    calls: CallLog,
    throttled: CallLog,
    /// Calls received so far, every operation counted.
    received: AtomicU32,
    throttle: Mutex<Option<Throttle>>,
    /// The reply to lose.
    lose: Mutex<Option<Lose>>,
    /// Once a reply was lost with [`Lose::stall`], every later request is
    /// held unanswered and never forwarded: the world stays as it was when
    /// the reply was lost.
    stalled: AtomicBool,
    fired: watch::Sender<bool>,
}

/// Which reply the proxy loses, and what it does after.
#[derive(Debug)]
struct Lose {
    operation: String,
    /// The call number of `operation`, from 1.
    nth: u32,
    /// Whether every later request is held ([`CountingProxy::lose_reply`])
    /// rather than forwarded ([`CountingProxy::lose_reply_and_go_on`]).
    stall: bool,
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
        let state = Arc::new(State {
            upstream,
            calls: CallLog::default(),
            throttled: CallLog::default(),
            received: AtomicU32::new(0),
            throttle: Mutex::new(None),
            lose: Mutex::new(None),
            stalled: AtomicBool::new(false),
            fired: watch::channel(false).0,
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, shared.clone()));
            }
        });
        CountingProxy { endpoint, state }
    }

    /// The endpoint URL to give the process under test.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The calls counted so far, per operation (e.g. `ecs:UpdateService`):
    /// every request received, throttled and held ones included.
    pub fn calls(&self) -> &CallLog {
        &self.state.calls
    }

    /// The calls answered with throttling, per operation.
    pub fn throttled(&self) -> &CallLog {
        &self.state.throttled
    }

    /// Answers every `throttle.every`-th call received from now on with an
    /// HTTP 400 throttling error in the shape of its protocol (awsJson:
    /// `ThrottlingException`; the query protocol of ELBv2: `Throttling`)
    /// instead of forwarding it. `None` stops throttling.
    pub fn throttle(&self, throttle: Option<Throttle>) {
        if let Some(t) = throttle {
            assert!(t.every >= 1, "throttle every n-th call, n >= 1");
        }
        self.state.received.store(0, Ordering::SeqCst);
        *self.state.throttle.lock().unwrap() = throttle;
    }

    /// Loses the reply of the `nth` call of `operation` (1-based, counted as
    /// [`calls`](Self::calls) counts it, e.g. `ecs:UpdateService`): the call
    /// is forwarded, moto applies it and answers, and the proxy closes the
    /// client's connection without a word. From then on the proxy holds
    /// every request unanswered, so that nothing after the lost reply (an
    /// SDK retry included) reaches moto: as seen from AWS, the caller died
    /// the moment its call was applied. Replaces an earlier `lose_reply`.
    pub fn lose_reply(&self, operation: &str, nth: u32) -> LostReply {
        self.lose(operation, nth, true)
    }

    /// Loses the reply of the `nth` call of `operation` as
    /// [`lose_reply`](Self::lose_reply) does, but then goes on forwarding
    /// every request as before, the retry of the lost call included: as
    /// seen from AWS, the caller lived on and retried (an AWS SDK retries a
    /// call whose connection dropped). Replaces an earlier `lose_reply`.
    pub fn lose_reply_and_go_on(&self, operation: &str, nth: u32) -> LostReply {
        self.lose(operation, nth, false)
    }

    fn lose(&self, operation: &str, nth: u32, stall: bool) -> LostReply {
        assert!(nth >= 1, "calls are counted from 1");
        *self.state.lose.lock().unwrap() = Some(Lose {
            operation: operation.to_string(),
            nth,
            stall,
        });
        LostReply {
            fired: self.state.fired.subscribe(),
        }
    }
}

/// Relays one client connection: one request, counted, forwarded unless
/// throttled, held or lost, and its whole answer copied back.
async fn relay(mut client: TcpStream, state: Arc<State>) {
    let Some((request, operation, json)) = read_request(&mut client).await else {
        return;
    };
    state.calls.record(operation.clone());
    let number = state.received.fetch_add(1, Ordering::SeqCst) + 1;
    if state.stalled.load(Ordering::SeqCst) {
        hold(client).await;
        return;
    }
    let throttle = *state.throttle.lock().unwrap();
    if let Some(t) = throttle.filter(|t| number.is_multiple_of(t.every)) {
        state.throttled.record(operation);
        let _ = client.write_all(&throttling(json, t.retry_after)).await;
        let _ = client.shutdown().await;
        return;
    }
    let lost = {
        let lose = state.lose.lock().unwrap();
        lose.as_ref()
            .filter(|l| l.operation == operation && state.calls.count(&operation) == l.nth)
            .map(|l| l.stall)
    };
    let Ok(mut server) = TcpStream::connect(&state.upstream).await else {
        return;
    };
    if server.write_all(&request).await.is_err() {
        return;
    }
    let Some(answer) = read_response(&mut server).await else {
        return;
    };
    if let Some(stall) = lost {
        // moto applied the call; the caller never learns it.
        if stall {
            state.stalled.store(true, Ordering::SeqCst);
        }
        drop(client);
        state.fired.send_replace(true);
        return;
    }
    let _ = client.write_all(&answer).await;
    let _ = client.shutdown().await;
}

/// Keeps `client` open without answering, until it gives up.
async fn hold(mut client: TcpStream) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = client.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// The HTTP answer of a throttled call.
fn throttling(json: bool, retry_after: Option<Duration>) -> Vec<u8> {
    let (content_type, body) = if json {
        (
            "application/x-amz-json-1.1",
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_string(),
        )
    } else {
        (
            "text/xml",
            "<ErrorResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\">\
             <Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>\
             <RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
                .to_string(),
        )
    };
    let retry_after = retry_after
        .map(|d| format!("Retry-After: {}\r\n", d.as_secs()))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         x-amzn-requestid: 00000000-0000-0000-0000-000000000000\r\n{retry_after}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The value of header `name` in an HTTP head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Reads a head and then `content-length` bytes of body; `None` when the
/// peer closed first. With `to_end`, a message without a length runs to the
/// end of the connection.
async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
    to_end: bool,
) -> Option<(Vec<u8>, String)> {
    let mut message: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = message.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => message.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&message[..head_end]).to_string();
    match header(&head, "content-length") {
        Some(v) => {
            let length: usize = v.parse().expect("a numeric content-length");
            while message.len() < head_end + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => message.extend_from_slice(&chunk[..n]),
                }
            }
            message.truncate(head_end + length);
        }
        None if to_end => {
            let _ = stream.read_to_end(&mut message).await;
        }
        None => {}
    }
    Some((message, head))
}

/// One request from the client, its operation, and whether its protocol is
/// awsJson (else the query protocol).
async fn read_request(client: &mut TcpStream) -> Option<(Vec<u8>, String, bool)> {
    let (request, head) = read_message(client, false).await?;
    assert!(
        header(&head, "transfer-encoding").is_none(),
        "the counting proxy expects requests with a content-length: {head}"
    );
    let body_at = request.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let target = header(&head, "x-amz-target");
    let operation = operation_from(target.as_deref(), &request[body_at..]);
    Some((request, operation, target.is_some()))
}

/// moto's whole answer to one request.
async fn read_response(server: &mut TcpStream) -> Option<Vec<u8>> {
    read_message(server, true).await.map(|(answer, _)| answer)
}
