//! The proxy's HTTP/1.1 client connections to the backends: each worker
//! thread has its own pool of idle connections per backend address (so its
//! lock is never contended, and a connection is driven by the runtime of the
//! worker that uses it), and a response body that gives its connection back
//! once it has been read to the end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A connection's request side.
pub(crate) type Sender = SendRequest<RequestBody>;

/// A request's body on its way to a backend: the client's, or none when a
/// request without a body is sent again.
pub(crate) enum RequestBody {
    Client(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Idle connections kept per backend address.
const MAX_IDLE: usize = 256;
/// An idle connection idle this long is checked once more before reuse,
/// after one more poll for I/O. Under load a worker polls for I/O between
/// requests anyway, so a close that arrived while a connection sat idle for
/// a few milliseconds has already been seen; the extra poll (a yield to the
/// runtime) is for connections idle longer, where a backend's keep-alive
/// timeout or stop is likelier and the yield costs nothing noticeable. At
/// 1 ms, it yielded on most requests at 20,000 req/s and added about 0.3 ms
/// to the p99 (benches/local_proxy.sh).
const RECHECK_AFTER: Duration = Duration::from_millis(20);
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One worker's idle connections to the backends, per address. A proxy has
/// a handful of backends: a short list scanned per request costs less than
/// hashing the address.
pub(crate) struct Pool {
    idle: Mutex<Vec<(SocketAddr, Vec<Idle>)>>,
    connect_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            connect_timeout,
        }
    }

    /// The most recently used idle connection to `addr` that is still open,
    /// and whether it had been idle a while (the backend may have closed it
    /// since without this worker having seen it yet).
    ///
    /// One that has been idle a while is checked after this worker's runtime
    /// has polled for I/O once more, so that a close the backend sent in the
    /// meantime (it stopped, or crashed) is seen before the request goes out
    /// on it rather than failing the request.
    pub(crate) async fn take(&self, addr: SocketAddr) -> Option<(Sender, bool)> {
        loop {
            let (sender, idle_for) = {
                let mut all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (_, idle) = all.iter_mut().find(|(a, _)| *a == addr)?;
                let i = idle.pop()?;
                (i.sender, i.since.elapsed())
            };
            if sender.is_closed() || idle_for >= IDLE_TIMEOUT {
                continue;
            }
            let long_idle = idle_for >= RECHECK_AFTER;
            if long_idle {
                tokio::task::yield_now().await;
                if sender.is_closed() {
                    continue;
                }
            }
            return Some((sender, long_idle));
        }
    }

    /// Keeps `sender` for the next request to `addr`, and closes the idle
    /// connections that have waited too long.
    pub(crate) fn put(&self, addr: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Addresses whose connections have all gone are dropped, so that
        // the list does not grow with every instance ever started.
        all.retain(|(a, idle)| *a == addr || !idle.is_empty());
        let i = match all.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None => {
                all.push((addr, Vec::new()));
                all.len() - 1
            }
        };
        let idle = &mut all[i].1;
        let expired = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= IDLE_TIMEOUT || i.sender.is_closed())
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
        }
    }

    /// A new connection to `addr`.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> std::io::Result<Sender> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {:?}", self.connect_timeout),
                )
            })??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// A backend's response body; once read to the end it gives its connection
/// back to the pool. Dropped before that, the connection is closed.
pub(crate) struct PooledBody {
    body: Incoming,
    back: Option<(Arc<Pool>, SocketAddr, Sender)>,
}

impl PooledBody {
    pub(crate) fn new(body: Incoming, pool: Arc<Pool>, addr: SocketAddr, sender: Sender) -> Self {
        let mut b = PooledBody {
            body,
            back: Some((pool, addr, sender)),
        };
        b.give_back_if_done();
        b
    }

    fn give_back_if_done(&mut self) {
        if self.body.is_end_stream() {
            if let Some((pool, addr, sender)) = self.back.take() {
                pool.put(addr, sender);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some((pool, addr, sender)) = this.back.take() {
                    pool.put(addr, sender);
                }
            }
            Poll::Ready(Some(Ok(_))) => this.give_back_if_done(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
