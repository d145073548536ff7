//! [`LocalProxy`]: an in-process HTTP/1.1 reverse proxy with a weighted,
//! atomically switched split between the colors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bluegreen_core::error::source_chain;
use bluegreen_core::{Color, Error, Result, TargetHealth, TrafficRouter, TrafficSplit};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::ProxyMetrics;
use crate::pool::{Pool, PooledBody, RequestBody};
use crate::PROVIDER;

/// The response header naming the color that answered.
pub const COLOR_HEADER: &str = "x-bluegreen-color";

/// The response header marking an answer the proxy produced itself (502, 503)
/// rather than the application.
pub const PROXY_ERROR_HEADER: &str = "x-bluegreen-proxy-error";

/// [`COLOR_HEADER`] as a header name built once: inserting a `&str` name
/// that is not a standard header copies it into a new allocation each time.
static COLOR_HEADER_NAME: HeaderName = HeaderName::from_static(COLOR_HEADER);
static PROXY_ERROR_HEADER_NAME: HeaderName = HeaderName::from_static(PROXY_ERROR_HEADER);
/// Each color's [`COLOR_HEADER`] value, indexed by [`color_index`].
static COLOR_VALUES: [HeaderValue; 2] = [
    HeaderValue::from_static("blue"),
    HeaderValue::from_static("green"),
];

fn color_index(c: Color) -> usize {
    usize::from(c == Color::Green)
}

/// Where the proxy sends each color's requests.
///
/// [`LocalCompute`](crate::LocalCompute) implements it with its serving
/// instances; [`StaticUpstreams`] with fixed addresses.
pub trait Upstreams: Send + Sync + 'static {
    /// The `n`-th (modulo their number) address of `color` that may receive a
    /// request now, or `None` if the color has none.
    fn pick(&self, color: Color, n: usize) -> Option<SocketAddr>;

    /// How many of `color`'s targets are healthy.
    fn health(&self, color: Color) -> TargetHealth;
}

/// Fixed upstream addresses per color, always reported healthy: for
/// processes bluegreen does not start itself.
#[derive(Debug, Clone, Default)]
pub struct StaticUpstreams {
    blue: Vec<SocketAddr>,
    green: Vec<SocketAddr>,
}

impl StaticUpstreams {
    /// `blue` and `green`'s addresses.
    pub fn new(blue: Vec<SocketAddr>, green: Vec<SocketAddr>) -> Self {
        StaticUpstreams { blue, green }
    }

    fn of(&self, c: Color) -> &[SocketAddr] {
        match c {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }
}

impl Upstreams for StaticUpstreams {
    fn pick(&self, color: Color, n: usize) -> Option<SocketAddr> {
        let a = self.of(color);
        (!a.is_empty()).then(|| a[n % a.len()])
    }

    fn health(&self, color: Color) -> TargetHealth {
        let n = self.of(color).len() as u32;
        TargetHealth {
            healthy: n,
            total: n,
        }
    }
}

/// What the proxy answers with: a backend's body or its own text.
enum ProxyBody {
    Upstream(PooledBody),
    Full(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|n| match n {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(b) => b.size_hint(),
        }
    }
}

/// Builds and starts a [`LocalProxy`].
pub struct LocalProxyBuilder {
    upstreams: Arc<dyn Upstreams>,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    split: TrafficSplit,
    metrics: ProxyMetrics,
    connect_attempts: u32,
    workers: usize,
}

impl std::fmt::Debug for LocalProxyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProxyBuilder")
            .field("listen", &self.listen)
            .field("admin", &self.admin)
            .field("split", &self.split)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl LocalProxyBuilder {
    /// The address clients connect to (default `127.0.0.1:0`, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Also serve the admin endpoint on `addr`: `GET /metrics` (Prometheus
    /// text), `GET /split` (JSON) and `GET /health`.
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// The split in force at start (default: all on blue).
    pub fn initial_split(mut self, split: TrafficSplit) -> Self {
        self.split = split;
        self
    }

    /// How many worker threads serve the clients (default: one per CPU,
    /// at least 1). Each has its own single-threaded runtime and its own
    /// connections to the backends; the admin endpoint runs on the runtime
    /// that calls [`start`](Self::start).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Where the measurements go (default: a fresh [`ProxyMetrics`]).
    pub fn metrics(mut self, metrics: ProxyMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Starts listening. Fails with [`ErrorKind::Conflict`](bluegreen_core::ErrorKind)
    /// naming the address when it is in use.
    pub async fn start(self) -> Result<LocalProxy> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|e| {
                let m = format!("{what} address {addr}: cannot listen on it: {e}");
                let err = if e.kind() == std::io::ErrorKind::AddrInUse {
                    Error::conflict(m)
                } else {
                    Error::invalid_input(m)
                };
                err.with_provider(PROVIDER).with_operation("start")
            })
        };
        let listener = bind(self.listen, "listen").await?;
        let admin = match self.admin {
            Some(a) => Some(bind(a, "admin").await?),
            None => None,
        };
        let (split_tx, _) = watch::channel((self.split, Instant::now()));
        let inner = Arc::new(ProxyInner {
            blue: AtomicU8::new(self.split.percent(Color::Blue)),
            sequence: AtomicUsize::new(0),
            upstreams: self.upstreams,
            metrics: self.metrics,
            connect_attempts: self.connect_attempts,
            split_tx,
        });
        let (stop_tx, stop_rx) = watch::channel(());
        let addr = listener.local_addr().map_err(|e| {
            Error::unavailable(format!("listen address: {e}")).with_provider(PROVIDER)
        })?;
        let listener = listener.into_std().map_err(|e| {
            Error::unavailable(format!("listen address {addr}: {e}")).with_provider(PROVIDER)
        })?;
        for worker in 0..self.workers {
            let spawned = listener.try_clone().and_then(|listener| {
                let (inner, stop) = (inner.clone(), stop_rx.clone());
                std::thread::Builder::new()
                    .name(format!("bluegreen-proxy-{worker}"))
                    .spawn(move || run_worker(listener, stop, inner))
            });
            if let Err(e) = spawned {
                return Err(Error::unavailable(format!(
                    "cannot start proxy worker {worker} for {addr}: {e}"
                ))
                .with_provider(PROVIDER)
                .with_operation("start"));
            }
        }
        let admin_addr = match admin {
            Some(l) => {
                let a = l.local_addr().ok();
                let inner = inner.clone();
                tokio::spawn(serve(l, stop_rx, move |req| {
                    let inner = inner.clone();
                    async move { Ok::<_, Infallible>(inner.admin(req)) }
                }));
                a
            }
            None => None,
        };
        Ok(LocalProxy {
            inner,
            addr,
            admin_addr,
            _stop: Arc::new(stop_tx),
        })
    }
}

/// An in-process HTTP/1.1 reverse proxy in front of both colors.
///
/// * **Per request, not per connection.** Each request picks its color from
///   the split in force when it arrives, so keep-alive client connections
///   move with the split and are never pinned to a drained color.
/// * **Exact weights.** Of every 100 consecutive requests, exactly the
///   split's percent go to each color (interleaved, not in runs).
/// * **Atomic switch.** The split is one atomic value: a request sees the
///   old split or the new one, never a mix, and a request in flight finishes
///   on the backend that started it.
/// * **Workers.** Client connections are served by worker threads (one per
///   CPU by default, see [`LocalProxyBuilder::workers`]), each with its own
///   single-threaded runtime, so a request is handled start to end on one
///   thread, as nginx's workers do.
/// * **Backend connections.** HTTP/1.1 keep-alive connections to each
///   backend, pooled per worker; one is reused only once its previous
///   response has been read to the end, and idle ones close after 30 s.
/// * **Failures.** A request that never reached a backend (it cannot be
///   connected to, or closed an idle connection just before the request went
///   out) is sent again, to the next instance, and so is one without a body
///   and with an idempotent method whose connection the backend reset before
///   answering; a backend that otherwise fails
///   mid-request gives that one client a 502 (counted as a 5xx of its color);
///   a color without a serving instance gives 503.
/// * **Measurements.** Every answered request is recorded in
///   [`metrics`](Self::metrics) under the color that answered.
///
/// Dropping the last handle stops listening.
#[derive(Clone)]
pub struct LocalProxy {
    inner: Arc<ProxyInner>,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    _stop: Arc<watch::Sender<()>>,
}

impl std::fmt::Debug for LocalProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProxy")
            .field("addr", &self.addr)
            .field("admin_addr", &self.admin_addr)
            .field("split", &self.inner.split())
            .finish()
    }
}

impl LocalProxy {
    /// A builder forwarding to `upstreams`.
    pub fn builder(upstreams: Arc<dyn Upstreams>) -> LocalProxyBuilder {
        LocalProxyBuilder {
            upstreams,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            split: TrafficSplit::all_on(Color::Blue),
            metrics: ProxyMetrics::default(),
            connect_attempts: 3,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin endpoint's address, if started with one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The proxy's measurements (also a [`MetricsSource`](bluegreen_core::MetricsSource)).
    pub fn metrics(&self) -> ProxyMetrics {
        self.inner.metrics.clone()
    }

    /// Every split change with the instant it took effect, starting with the
    /// one in force.
    pub fn split_changes(&self) -> watch::Receiver<(TrafficSplit, Instant)> {
        self.inner.split_tx.subscribe()
    }
}

struct ProxyInner {
    /// Blue's percent; green has the rest. One atomic, so a switch is atomic.
    blue: AtomicU8,
    /// Requests so far, for the exact split; the one counter every worker
    /// writes per request.
    sequence: AtomicUsize,
    upstreams: Arc<dyn Upstreams>,
    metrics: ProxyMetrics,
    connect_attempts: u32,
    split_tx: watch::Sender<(TrafficSplit, Instant)>,
}

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers. Most messages have none: one pass over
/// their few headers finds that, instead of seven hashed look-ups.
fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    if h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        for name in &HOP_BY_HOP {
            h.remove(name);
        }
    }
}

/// Whether the backend reset the connection (rather than closing it after
/// reading the request, as a process that dies mid-request does).
fn is_reset(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            );
        }
        source = cause.source();
    }
    false
}

/// `addr (color): error: its source: ...`.
fn error_chain(addr: SocketAddr, color: Color, e: &hyper::Error) -> String {
    format!("{addr} ({color}): {}", source_chain(e))
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Full(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn proxy_error(status: StatusCode, color: Color, body: String) -> Response<ProxyBody> {
    let mut r = text(status, body);
    r.headers_mut().insert(
        COLOR_HEADER_NAME.clone(),
        COLOR_VALUES[color_index(color)].clone(),
    );
    r.headers_mut().insert(
        PROXY_ERROR_HEADER_NAME.clone(),
        HeaderValue::from_static("1"),
    );
    r
}

impl ProxyInner {
    fn split(&self) -> TrafficSplit {
        TrafficSplit::with_percent(Color::Blue, self.blue.load(Ordering::Acquire))
    }

    /// The color of the next request: of every 100 consecutive requests,
    /// exactly `blue` percent go to blue, spread out (61 is coprime to 100).
    fn choose(&self) -> Color {
        let blue = usize::from(self.blue.load(Ordering::Acquire));
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        if (n % 100 * 61) % 100 < blue {
            Color::Blue
        } else {
            Color::Green
        }
    }

    async fn forward(&self, worker: &Worker, req: Request<Incoming>) -> Response<ProxyBody> {
        let pool = &worker.pool;
        let start = Instant::now();
        let color = self.choose();
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            // Absolute-form: the backend gets the origin-form.
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = match Uri::try_from(path) {
                Ok(u) => u,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("bluegreen proxy: bad request target {path:?}: {e}\n"),
                    )
                }
            };
        }
        parts.version = http::Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        // A request without a body and with an idempotent method may be sent
        // once more when the backend resets the connection before answering:
        // a new connection to an instance whose listener is closing, or an
        // idle one the backend dropped. Only then is a copy kept, so a busy
        // keep-alive connection copies nothing.
        let mut replayable = body.is_end_stream() && parts.method.is_idempotent();
        let mut req = Request::from_parts(parts, RequestBody::Client(body));
        let rr = &worker.round_robin[color_index(color)];
        let mut last_error = String::new();
        'attempts: for _ in 0..self.connect_attempts {
            let Some(addr) = self
                .upstreams
                .pick(color, rr.fetch_add(1, Ordering::Relaxed))
            else {
                let r = proxy_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    color,
                    format!("bluegreen proxy: {color} has no serving instance\n"),
                );
                self.metrics.record(color, 503, start.elapsed());
                return r;
            };
            if !req.headers().contains_key(header::HOST) {
                if let Ok(h) = HeaderValue::try_from(addr.to_string()) {
                    req.headers_mut().insert(header::HOST, h);
                }
            }
            // Idle connections first; one the backend has closed in the
            // meantime hands the request back untouched, and the next one
            // (or a new connection) gets it.
            loop {
                let (mut sender, reused, risky) = match pool.take(addr).await {
                    Some((s, long_idle)) => (s, true, long_idle),
                    None => match pool.connect(addr).await {
                        Ok(s) => (s, false, true),
                        Err(e) => {
                            // Never reached the backend: another instance
                            // may take the request.
                            last_error = format!("{addr} ({color}): connect: {e}");
                            continue 'attempts;
                        }
                    },
                };
                if let Err(e) = sender.ready().await {
                    if reused {
                        continue;
                    }
                    last_error = error_chain(addr, color, &e);
                    continue 'attempts;
                }
                let replay = (replayable && risky).then(|| {
                    (
                        req.method().clone(),
                        req.uri().clone(),
                        req.headers().clone(),
                    )
                });
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        let (mut rparts, rbody) = resp.into_parts();
                        strip_hop_by_hop(&mut rparts.headers);
                        rparts.headers.insert(
                            COLOR_HEADER_NAME.clone(),
                            COLOR_VALUES[color_index(color)].clone(),
                        );
                        self.metrics
                            .record(color, rparts.status.as_u16(), start.elapsed());
                        let body = PooledBody::new(rbody, pool.clone(), addr, sender);
                        return Response::from_parts(rparts, ProxyBody::Upstream(body));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => {
                            req = unsent;
                            if reused {
                                continue;
                            }
                            last_error = error_chain(addr, color, e.error());
                            continue 'attempts;
                        }
                        None => {
                            last_error = error_chain(addr, color, e.error());
                            if is_reset(e.error()) {
                                if let Some((method, uri, headers)) = replay {
                                    replayable = false;
                                    req = Request::new(RequestBody::Empty);
                                    *req.method_mut() = method;
                                    *req.uri_mut() = uri;
                                    *req.headers_mut() = headers;
                                    continue 'attempts;
                                }
                            }
                            // The backend may have acted on the request (it
                            // closed the connection without answering): it
                            // must not be sent twice.
                            break 'attempts;
                        }
                    },
                }
            }
        }
        tracing::warn!(%color, "bad gateway: {last_error}");
        self.metrics.record(color, 502, start.elapsed());
        proxy_error(
            StatusCode::BAD_GATEWAY,
            color,
            format!("bluegreen proxy: upstream {last_error}\n"),
        )
    }

    fn admin(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match req.uri().path() {
            "/metrics" => {
                let mut r = text(
                    StatusCode::OK,
                    self.metrics.prometheus_text(Some(self.split())),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/split" => {
                let s = self.split();
                let mut r = text(
                    StatusCode::OK,
                    format!(
                        "{{\"blue\":{},\"green\":{}}}\n",
                        s.percent(Color::Blue),
                        s.percent(Color::Green)
                    ),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            "/health" => text(StatusCode::OK, "ok\n".into()),
            other => text(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {other:?}: try /metrics, /split or /health\n"),
            ),
        }
    }
}

/// What one worker keeps to itself: its backend connections and its
/// position in each color's instances.
struct Worker {
    inner: Arc<ProxyInner>,
    pool: Arc<Pool>,
    round_robin: [AtomicUsize; 2],
}

/// One proxy worker: a thread with its own single-threaded runtime (nginx's
/// model) accepting on the shared listening socket, with its own pool of
/// backend connections, so a request never hops between threads.
fn run_worker(listener: std::net::TcpListener, stop: watch::Receiver<()>, inner: Arc<ProxyInner>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("bluegreen proxy worker: cannot start a runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("bluegreen proxy worker: cannot listen: {e}");
                return;
            }
        };
        let worker = Arc::new(Worker {
            inner,
            pool: Arc::new(Pool::new(Duration::from_secs(2))),
            round_robin: [AtomicUsize::new(0), AtomicUsize::new(0)],
        });
        serve(listener, stop, move |req| {
            // Only this worker's reference count changes per request, not
            // the one the workers share.
            let worker = worker.clone();
            async move { Ok::<_, Infallible>(worker.inner.forward(&worker, req).await) }
        })
        .await;
    });
}

/// Accepts HTTP/1.1 connections on `listener` until `stop` is dropped, then
/// lets open connections finish their current request.
async fn serve<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<()>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::result::Result<Response<ProxyBody>, Infallible>>
        + Send
        + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(handler));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

#[async_trait]
impl TrafficRouter for LocalProxy {
    /// The split in force, read from the proxy's atomic weight itself.
    async fn current_split(&self) -> Result<TrafficSplit> {
        Ok(self.inner.split())
    }

    /// Switches atomically: every request arriving afterwards uses `split`;
    /// requests in flight finish where they are. Idempotent.
    async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        let old = self
            .inner
            .blue
            .swap(split.percent(Color::Blue), Ordering::AcqRel);
        if old != split.percent(Color::Blue) {
            tracing::info!(%split, "traffic split changed");
            self.inner.split_tx.send_replace((split, Instant::now()));
        }
        Ok(())
    }

    /// The color's instances, healthy and in all, as the compute reports them.
    async fn target_health(&self, color: Color) -> Result<TargetHealth> {
        Ok(self.inner.upstreams.health(color))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prebuilt_color_header_values_name_each_color() {
        for c in Color::ALL {
            assert_eq!(COLOR_VALUES[color_index(c)], c.as_str());
        }
        assert_eq!(COLOR_HEADER_NAME.as_str(), COLOR_HEADER);
        assert_eq!(PROXY_ERROR_HEADER_NAME.as_str(), PROXY_ERROR_HEADER);
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_and_the_others_kept() {
        let mut h = http::HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let unchanged = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, unchanged);
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, unchanged);
    }
}
