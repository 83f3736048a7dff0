//! Connections on both listeners: a cap on how many are open, and a
//! deadline for every connection that is not doing anything.
//!
//! A [`Tracker`] per listener admits each accepted socket as a
//! [`GuardedIo`], which wraps it and closes it (its next read fails, so
//! hyper drops it) when
//! * it has not completed a first request within `--header-read-timeout`
//!   of being accepted: a client that never sends the HTTP/2 preface, a
//!   TLS handshake that stalls, HTTP/1 headers that trickle in;
//! * no request has run on it for `--idle-timeout` (a connection with a
//!   call in flight, such as a long `WatchAlerts` stream, is never idle);
//! * the listener is at its cap and a new connection arrives: the
//!   connection quiet for longest (no request running) is closed to make
//!   room. If every connection has a request running, the new one is
//!   refused instead. Slow or silent clients therefore cannot hold the
//!   process's file descriptors: each costs a slot for at most the header
//!   timeout, and gives it up to the next arrival.
//!
//! Requests are counted per connection by [`TrackLayer`] (gRPC, as a tower
//! layer reading the connection from the request extensions, where tonic
//! puts [`ConnInfo`]) and by [`serve_http`]'s per-connection service; the
//! count lasts until the response body ends. HTTP/2 limits (concurrent
//! streams, pending and local-error resets against rapid reset, keepalive
//! pings that find vanished peers) are set on both servers from
//! [`ConnectionSettings`]. Everything is visible in `/metrics` as
//! `pulse_connections_open{listener}`, `pulse_connections_accepted_total`
//! and `pulse_connections_closed_total{listener,reason}`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures::Stream;
use http_body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{Layer, Service};

use crate::config::ConnectionSettings;
use crate::telemetry::{CloseLabels, ListenerLabels, Telemetry};

/// Streams a peer may make the server reset for protocol errors per
/// connection before it is closed (hyper's default, set explicitly).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connections of one listener.
pub struct Tracker {
    /// `grpc` or `http`: the `listener` label.
    listener: &'static str,
    /// Most open connections; 0 = no cap.
    max: usize,
    header_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    telemetry: Arc<Telemetry>,
    /// The time base of [`ConnState::last_change_ms`].
    epoch: Instant,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
}

/// What is known about one open connection.
pub struct ConnState {
    id: u64,
    accepted: Instant,
    /// Requests running now (their response bodies not yet finished).
    in_flight: AtomicUsize,
    /// Requests started on this connection so far.
    requests: AtomicU64,
    /// When a request last started or ended, in ms since the tracker's epoch.
    last_change_ms: AtomicU64,
    epoch: Instant,
    /// Cancelled when the connection is closed to make room.
    evict: CancellationToken,
}

impl ConnState {
    /// Counts a request until the returned guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        RequestGuard(self.clone())
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Ordering::Release);
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_change_ms.load(Ordering::Acquire))
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// One running request; the connection is idle again once every guard is
/// dropped.
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection a request came on, in the request's extensions.
#[derive(Clone)]
pub struct ConnInfo {
    state: Arc<ConnState>,
}

impl Tracker {
    /// The tracker of `listener` (`grpc` or `http`) with a cap of `max`.
    pub fn new(
        listener: &'static str,
        max: usize,
        settings: &ConnectionSettings,
        telemetry: Arc<Telemetry>,
    ) -> Arc<Self> {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        telemetry
            .connections_open
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .set(0);
        Arc::new(Self {
            listener,
            max,
            header_timeout: nonzero(settings.header_read_timeout),
            idle_timeout: nonzero(settings.idle_timeout),
            telemetry,
            epoch: Instant::now(),
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
        })
    }

    /// Admits an accepted socket, closing the connection idle longest if
    /// the listener is full; `None` (the socket is dropped) when it is full
    /// of connections with requests running.
    pub fn admit<T>(self: &Arc<Self>, io: T) -> Option<GuardedIo<T>> {
        let state = {
            let mut open = self
                .open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.max > 0 && open.len() >= self.max {
                let victim = open
                    .values()
                    .filter(|c| !c.busy())
                    .min_by_key(|c| c.last_change_ms.load(Ordering::Acquire))
                    .map(|c| c.id);
                if let Some(victim) = victim.and_then(|id| open.remove(&id)) {
                    // Its own I/O wakes up, closes and counts it.
                    victim.evict.cancel();
                } else {
                    drop(open);
                    self.count_closed("refused");
                    return None;
                }
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let state = Arc::new(ConnState {
                id,
                accepted: Instant::now(),
                in_flight: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                last_change_ms: AtomicU64::new(0),
                epoch: self.epoch,
                evict: CancellationToken::new(),
            });
            state.touch();
            open.insert(id, state.clone());
            self.set_open(open.len());
            state
        };
        self.telemetry
            .connections_accepted
            .get_or_create(&self.labels())
            .inc();
        let first_deadline = self
            .header_timeout
            .map_or_else(far_future, |timeout| state.accepted + timeout);
        Some(GuardedIo {
            inner: io,
            timer: Box::pin(tokio::time::sleep_until(first_deadline.into())),
            evicted: Box::pin(state.evict.clone().cancelled_owned()),
            state,
            tracker: self.clone(),
            closed_by_us: None,
        })
    }

    fn labels(&self) -> ListenerLabels {
        ListenerLabels {
            listener: self.listener.to_owned(),
        }
    }

    fn set_open(&self, n: usize) {
        self.telemetry
            .connections_open
            .get_or_create(&self.labels())
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn count_closed(&self, reason: &str) {
        self.telemetry
            .connections_closed
            .get_or_create(&CloseLabels {
                listener: self.listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Drops a closed connection from the registry (an evicted one is
    /// already gone from it).
    fn forget(&self, id: u64) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.remove(&id);
        self.set_open(open.len());
    }
}

/// A deadline that does not come (a timeout of 0 is off).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// An accepted socket under its listener's deadlines (see the module doc).
pub struct GuardedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    tracker: Arc<Tracker>,
    /// The next moment the deadlines must be checked.
    timer: Pin<Box<Sleep>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Why this side closed the connection, once it did.
    closed_by_us: Option<&'static str>,
}

impl<T> GuardedIo<T> {
    /// What requests on this connection carry in their extensions.
    pub fn info(&self) -> ConnInfo {
        ConnInfo {
            state: self.state.clone(),
        }
    }

    /// The reason to close now, if there is one; otherwise the timer is set
    /// to the next deadline, so the task wakes up to check again. Called
    /// on every read: after a request ends, hyper reads again, and the idle
    /// deadline moves in.
    fn check(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        if let Some(reason) = self.closed_by_us {
            return Some(reason);
        }
        if self.evicted.as_mut().poll(cx).is_ready() {
            return Some(self.close("evicted"));
        }
        let now = Instant::now();
        let current = self.timer.deadline().into_std();
        let deadline = match self.deadline(now) {
            // Busy, or no timeout: only a timer that has run out is moved
            // (not on every read of a busy connection).
            Ok(None) if current > now => current,
            Ok(None) => self.busy_recheck(now),
            Ok(Some(deadline)) => deadline,
            Err(reason) => return Some(self.close(reason)),
        };
        if current != deadline {
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            // Passed since `now`: decide on the next poll, at once.
            cx.waker().wake_by_ref();
        }
        None
    }

    /// When a busy connection (or one without timeouts) is looked at again.
    fn busy_recheck(&self, now: Instant) -> Instant {
        self.tracker
            .idle_timeout
            .map_or_else(far_future, |idle| now + idle)
    }

    /// When this connection must be checked next (`None`: while it is busy,
    /// or has no timeout to keep), or why it must close now.
    fn deadline(&self, now: Instant) -> Result<Option<Instant>, &'static str> {
        let tracker = &self.tracker;
        if self.state.busy() {
            // A request ending restarts the clock; until then nothing is due.
            return Ok(None);
        }
        let (limit, since, reason) = if self.state.requests.load(Ordering::Acquire) == 0 {
            (
                tracker.header_timeout,
                self.state.accepted,
                "handshake_timeout",
            )
        } else {
            (
                tracker.idle_timeout,
                self.state.idle_since(),
                "idle_timeout",
            )
        };
        match limit {
            Some(limit) if now >= since + limit => Err(reason),
            Some(limit) => Ok(Some(since + limit)),
            None => Ok(None),
        }
    }

    fn close(&mut self, reason: &'static str) -> &'static str {
        self.closed_by_us = Some(reason);
        self.tracker.count_closed(reason);
        tracing::debug!(
            listener = self.tracker.listener,
            reason,
            "closing a connection"
        );
        reason
    }

    fn closed_error(reason: &'static str) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connection closed by the server ({reason})"),
        )
    }
}

impl<T> Drop for GuardedIo<T> {
    fn drop(&mut self) {
        if self.closed_by_us.is_none() {
            self.tracker.count_closed("ended");
        }
        self.tracker.forget(self.state.id);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(reason) = self.check(cx) {
            return Poll::Ready(Err(Self::closed_error(reason)));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(reason) = self.closed_by_us {
            return Poll::Ready(Err(Self::closed_error(reason)));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(reason) = self.closed_by_us {
            return Poll::Ready(Err(Self::closed_error(reason)));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for GuardedIo<TcpStream> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info()
    }
}

/// Accepted connections of `listener`, admitted by `tracker`, for tonic's
/// `serve_with_incoming_shutdown`. Sockets get `TCP_NODELAY`: without it a
/// small response can wait ~40 ms for the peer's delayed ACK.
pub fn incoming(
    listener: TcpListener,
    tracker: Arc<Tracker>,
) -> impl Stream<Item = io::Result<GuardedIo<TcpStream>>> {
    futures::stream::unfold((listener, tracker), |(listener, tracker)| async move {
        loop {
            match listener.accept().await {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    if let Some(io) = tracker.admit(socket) {
                        return Some((Ok(io), (listener, tracker)));
                    }
                }
                Err(error) => accept_failed(&tracker, &error).await,
            }
        }
    })
}

async fn accept_failed(tracker: &Tracker, error: &io::Error) {
    tracing::warn!(listener = tracker.listener, %error, "cannot accept a connection");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Counts each request of a gRPC connection while it runs (see the module
/// doc); add it to the tonic server so it sees tonic's [`ConnInfo`].
#[derive(Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Track { inner }
    }
}

/// The service [`TrackLayer`] wraps.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Track<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| info.state.start_request());
        TrackFuture {
            inner: self.inner.call(request),
            guard,
        }
    }
}

pin_project! {
    /// A response on its way; it hands the request's guard to the body.
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
    }
}

impl<F, B, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, guard })))
    }
}

pin_project! {
    /// A response body that keeps its request counted until it ends.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Sets the HTTP/2 limits of [`ConnectionSettings`] on a tonic server.
pub fn grpc_limits<L>(
    server: tonic::transport::Server<L>,
    settings: &ConnectionSettings,
) -> tonic::transport::Server<L> {
    server
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .http2_max_pending_accept_reset_streams(Some(settings.http2_max_pending_reset_streams))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .http2_keepalive_interval(nonzero(settings.http2_keepalive_interval))
        .http2_keepalive_timeout(nonzero(settings.http2_keepalive_timeout))
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Serves `app` on `listener` (HTTP/1.1, and HTTP/2 with prior knowledge
/// when plaintext; over TLS when `tls` is set) under `tracker`'s limits,
/// until `stop`; then stops accepting and lets open connections finish
/// (idle keep-alive ones are closed at once). The caller bounds that wait.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    tracker: Arc<Tracker>,
    settings: ConnectionSettings,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(nonzero(settings.header_read_timeout));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(settings.http2_max_pending_reset_streams)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(nonzero(settings.http2_keepalive_interval))
        .keep_alive_timeout(settings.http2_keepalive_timeout);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(error) => {
                accept_failed(&tracker, &error).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let Some(io) = tracker.admit(socket) else {
            continue;
        };
        let service = TrackLayer.layer(app.clone());
        let info = io.info();
        let service =
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(info.clone());
                service.clone().call(request.map(axum::body::Body::new))
            });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match acceptor.clone() {
            None => {
                tokio::spawn(serve_connection(builder, io, service, watcher));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    // A stalled handshake is closed by the header timeout.
                    match acceptor.accept(io).await {
                        Ok(io) => serve_connection(builder, io, service, watcher).await,
                        Err(error) => tracing::debug!(%error, "TLS handshake failed"),
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn serve_connection<I, S, B>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder.serve_connection(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(error = %error, "HTTP connection ended with an error");
    }
}
