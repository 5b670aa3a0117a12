//! Connection-level limits tonic has no setting for: a cap on open
//! connections, and closing connections that have had no call in flight
//! for the idle timeout (HTTP/2 keepalive pings do not count as use).
//!
//! Accepted sockets are wrapped in [`LimitedConn`], which holds a slot of
//! the connection cap for its lifetime and watches its own idleness; the
//! [`TrackCalls`] layer counts each connection's calls in flight (a call
//! lasts until its response body ends, so open streams count).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::{wrappers::TcpListenerStream, Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::security::Principal;

/// After shutdown begins, idle connections close this much later (the
/// GOAWAY has gone out by then).
const SHUTDOWN_GOAWAY_GRACE: Duration = Duration::from_millis(50);

/// Milliseconds since the first call (a monotonic clock for idleness).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One connection's calls in flight and when the last one ended.
#[derive(Debug, Default)]
pub struct Activity {
    calls: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn begin(self: &Arc<Self>, method: Arc<MethodCalls>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        method.open.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone(), method)
    }

    /// Idle for at least `timeout`: no call in flight, and none ended
    /// within it.
    fn idle_for(&self, timeout: Duration) -> Option<Duration> {
        if self.calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = now_ms().saturating_sub(self.idle_since_ms.load(Ordering::Acquire));
        Some(Duration::from_millis(idle)).filter(|d| *d >= timeout)
    }

    fn remaining(&self, timeout: Duration) -> Duration {
        let idle = now_ms().saturating_sub(self.idle_since_ms.load(Ordering::Acquire));
        timeout.saturating_sub(Duration::from_millis(idle))
    }
}

/// Ends a call when dropped (with its response body).
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>, Arc<MethodCalls>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(now_ms(), Ordering::Release);
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
        self.1.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Calls in flight of one method, for the whole process (to name what a
/// drain is still waiting for).
#[derive(Debug)]
pub struct MethodCalls {
    path: String,
    open: AtomicUsize,
}

/// Every method path seen, with its calls in flight. Read-locked per call
/// (to find its counter); write-locked once per new path (bounded: past
/// [`MAX_TRACKED_METHODS`] paths, the rest are counted together).
static METHODS: OnceLock<parking_lot::RwLock<std::collections::HashMap<String, Arc<MethodCalls>>>> =
    OnceLock::new();

/// At most this many distinct paths are tracked by name.
const MAX_TRACKED_METHODS: usize = 256;

fn method_calls(path: &str) -> Arc<MethodCalls> {
    let methods = METHODS.get_or_init(Default::default);
    if let Some(m) = methods.read().get(path) {
        return m.clone();
    }
    let mut w = methods.write();
    let key = if w.len() < MAX_TRACKED_METHODS {
        path
    } else {
        "(other)"
    };
    w.entry(key.to_string())
        .or_insert_with(|| {
            Arc::new(MethodCalls {
                path: key.to_string(),
                open: AtomicUsize::new(0),
            })
        })
        .clone()
}

/// The methods with calls in flight now, with how many: what a drain that
/// timed out was waiting for.
pub fn open_calls() -> Vec<(String, usize)> {
    let Some(methods) = METHODS.get() else {
        return Vec::new();
    };
    let mut open: Vec<(String, usize)> = methods
        .read()
        .values()
        .filter_map(|m| {
            let n = m.open.load(Ordering::Acquire);
            (n > 0).then(|| (m.path.clone(), n))
        })
        .collect();
    open.sort();
    open
}

/// What a request's extensions carry about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Addresses, as tonic gives them for plain TCP.
    pub tcp: TcpConnectInfo,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Who the client's verified certificate names, if it sent one.
    pub peer: Option<Principal>,
    activity: Arc<Activity>,
}

/// A connection's transport: TCP, or TLS over TCP.
pub enum Io {
    /// Clear text.
    Plain(TcpStream),
    /// TLS (boxed: the session state is large).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(t) => t,
            Io::Tls(t) => t.get_ref().0,
        }
    }

    /// The principal of a verified client certificate.
    pub fn peer(&self) -> Option<Principal> {
        match self {
            Io::Plain(_) => None,
            Io::Tls(t) => t
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(crate::security::tls::principal_of),
        }
    }

    /// Runs the server side of a TLS handshake on a plain connection.
    pub async fn accept_tls(self, acceptor: tokio_rustls::TlsAcceptor) -> io::Result<Io> {
        match self {
            Io::Plain(t) => Ok(Io::Tls(Box::new(acceptor.accept(t).await?))),
            tls => Ok(tls),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Io::Tls(t) => Pin::new(t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Tls(t) => Pin::new(t).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(t) => t.is_write_vectored(),
            Io::Tls(t) => t.is_write_vectored(),
        }
    }
}

/// An accepted connection within the cap.
pub struct LimitedConn {
    io: Io,
    peer: Option<Principal>,
    _slot: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    /// Completes a moment after shutdown begins (time for the GOAWAY to
    /// go out); then the connection closes as soon as it has no call in
    /// flight. Clients that keep idle connections open (grpcio does) would
    /// otherwise hold the drain up.
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    closing: bool,
}

impl Connected for LimitedConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.io.tcp().connect_info(),
            tls: matches!(self.io, Io::Tls(_)),
            peer: self.peer.clone(),
            activity: self.activity.clone(),
        }
    }
}

impl LimitedConn {
    /// The same connection after a server TLS handshake, with the principal
    /// its verified client certificate names.
    pub async fn into_tls(self, acceptor: tokio_rustls::TlsAcceptor) -> io::Result<Self> {
        let LimitedConn {
            io,
            peer: _,
            _slot,
            activity,
            idle,
            shutdown,
            closing,
        } = self;
        let io = io.accept_tls(acceptor).await?;
        let peer = io.peer();
        Ok(LimitedConn {
            io,
            peer,
            _slot,
            activity,
            idle,
            shutdown,
            closing,
        })
    }

    /// Whether the idle timeout has passed, or shutdown has begun and no
    /// call is in flight; re-arms the timer otherwise.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(f) = self.shutdown.as_mut() {
            if f.as_mut().poll(cx).is_ready() {
                self.shutdown = None;
                self.closing = true;
            }
        }
        if self.closing && self.activity.calls.load(Ordering::Acquire) == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "server shutting down",
            ));
        }
        let Some((timeout, sleep)) = self.idle.as_mut() else {
            return Ok(());
        };
        while sleep.as_mut().poll(cx).is_ready() {
            if let Some(idle) = self.activity.idle_for(*timeout) {
                metrics::counter!("sluice_connections_closed_idle_total").increment(1);
                tracing::debug!(
                    idle_ms = idle.as_millis() as u64,
                    "closing an idle connection"
                );
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for the idle timeout",
                ));
            }
            // With calls in flight, look again a whole timeout later (the
            // last call's end restarts the count); else when it runs out.
            let next = if self.activity.calls.load(Ordering::Acquire) > 0 {
                *timeout
            } else {
                self.activity
                    .remaining(*timeout)
                    .max(Duration::from_millis(100))
            };
            sleep.as_mut().reset(tokio::time::Instant::now() + next);
        }
        Ok(())
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_idle(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A TLS handshake must finish within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections, ready for HTTP/2.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<LimitedConn>> + Send>>;

/// Like [`plain_incoming`], with TLS when `tls` is given: each handshake
/// runs in its own task (a slow or silent client holds up nobody), under
/// [`TLS_HANDSHAKE_TIMEOUT`], with the configuration current when the
/// connection came (certificates reload without a restart).
pub fn incoming(
    listener: TcpListener,
    max: usize,
    idle_timeout: Option<Duration>,
    shutdown: watch::Receiver<bool>,
    tls: Option<Arc<crate::security::tls::ReloadingConfig>>,
) -> Incoming {
    let plain = plain_incoming(listener, max, idle_timeout, shutdown);
    let Some(tls) = tls else {
        return Box::pin(plain);
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut plain = std::pin::pin!(plain);
        loop {
            let conn = tokio::select! {
                _ = tx.closed() => return,
                c = plain.next() => match c {
                    Some(c) => c,
                    None => return,
                },
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let shaken = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, conn.into_tls(acceptor));
                match shaken.await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("sluice_tls_handshake_failures_total").increment(1);
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("sluice_tls_handshake_failures_total").increment(1);
                        tracing::debug!("TLS handshake timed out");
                    }
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Accepts connections from `listener` while fewer than `max` are open;
/// over the cap a new connection is closed at once (the client sees
/// UNAVAILABLE and retries), and counted.
pub fn plain_incoming(
    listener: TcpListener,
    max: usize,
    idle_timeout: Option<Duration>,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = io::Result<LimitedConn>> + Send {
    let slots = Arc::new(Semaphore::new(max));
    let mut warned_at: Option<Instant> = None;
    TcpListenerStream::new(listener).filter_map(move |accepted| {
        let io = match accepted {
            Ok(io) => io,
            Err(e) => return Some(Err(e)),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("sluice_connections_refused_total").increment(1);
            if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                warned_at = Some(Instant::now());
                tracing::warn!(max, "a connection was refused: max_connections are open");
            }
            return None;
        };
        // Replies are small and latency matters: no Nagle delay.
        let _ = io.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        activity.idle_since_ms.store(now_ms(), Ordering::Release);
        let mut shutdown = shutdown.clone();
        Some(Ok(LimitedConn {
            io: Io::Plain(io),
            peer: None,
            _slot: slot,
            activity,
            idle: idle_timeout.map(|t| (t, Box::pin(tokio::time::sleep(t)))),
            shutdown: Some(Box::pin(async move {
                let _ = shutdown.wait_for(|s| *s).await;
                tokio::time::sleep(SHUTDOWN_GOAWAY_GRACE).await;
            })),
            closing: false,
        }))
    })
}

/// Counts each connection's calls in flight (see [`ConnInfo`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackCallsLayer;

impl<S> tower_layer::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> TrackCalls<S> {
        TrackCalls { inner }
    }
}

/// See [`TrackCallsLayer`].
#[derive(Debug, Clone)]
pub struct TrackCalls<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower_service::Service<http::Request<B>> for TrackCalls<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req
            .extensions()
            .get::<ConnInfo>()
            .map(|c| c.activity.begin(method_calls(req.uri().path())));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            let reply = response.extensions_mut().remove::<ReplyPermit>();
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    tonic::body::Body::new(GuardedBody {
                        inner: body,
                        _guard: guard,
                        _reply: reply,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that ends its call when dropped.
struct GuardedBody {
    inner: tonic::body::Body,
    _guard: CallGuard,
    _reply: Option<ReplyPermit>,
}

/// Bytes of unary replies that are encoded but not yet sent, for the whole
/// server. A reply the client does not read stays in memory until its
/// connection closes; this bounds what many such clients can pin. A reply
/// waits for room before it is sent (the client's deadline still applies).
#[derive(Debug, Clone)]
pub struct ReplyBudget {
    bytes: Arc<Semaphore>,
    total: u32,
}

/// A reply's share of the [`ReplyBudget`], held until its body is done;
/// put it in the response's extensions.
#[derive(Debug, Clone)]
pub struct ReplyPermit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

impl ReplyBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, u32::MAX as usize) as u32;
        Self {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `bytes` (at most the whole budget) are free.
    pub async fn reserve(&self, bytes: usize) -> Option<ReplyPermit> {
        let n = bytes.clamp(1, self.total as usize) as u32;
        let permit = self.bytes.clone().acquire_many_owned(n).await.ok()?;
        Some(ReplyPermit(Arc::new(permit)))
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
