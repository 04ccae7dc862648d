//! One HTTP connection's limits, in time: what hyper and hyper-util do not bound.
//!
//! - **One deadline to a whole request head** ([`watch`]). hyper's `header_read_timeout`
//!   covers HTTP/1 heads only: hyper-util's version sniffing, the HTTP/2 preface and SETTINGS
//!   and a HEADERS frame whose CONTINUATION never comes wait for ever. So each connection has a
//!   watchdog: while no request of it is in flight (from accept, TLS handshake included, or
//!   since its last response), it must complete a request head within `HEADER_TIMEOUT_MS`.
//!   One that never did is dropped at the deadline; one that has served requests (an idle
//!   keep-alive connection, an HTTP/2 connection with no stream open) is shut down gracefully
//!   (HTTP/2: GOAWAY) and dropped [`GRACE`] later if it still lingers. A request is "in flight"
//!   from the moment hyper hands it to the service (its head is complete) until its response
//!   body is dropped, so a long change feed never counts as idle.
//! - **A write timeout** ([`Guarded`]): a connection whose writes make no progress for
//!   `WRITE_TIMEOUT_MS` (the client reads nothing) fails its next write, which ends it; the
//!   socket is reset (`SO_LINGER` 0), so the kernel drops the unsent bytes at once instead of
//!   holding them for a client that does not read.
//! - **An abort handle** ([`ConnectionHandle`], in every request's extensions): the change feed
//!   uses it to close the connection of a feed that it ended and that does not take its last
//!   events (HTTP/2 flow control can stall a stream without stalling the socket).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// How long a connection that is being shut down gracefully (idle, or the gateway stopping)
/// may still take before it is dropped, when it is idle.
pub const GRACE: Duration = Duration::from_secs(1);

/// The state of one connection, shared by its watchdog, its service and its requests.
#[derive(Debug)]
pub(crate) struct Conn {
    accepted: Instant,
    /// Requests whose head is complete and whose response body has not been dropped.
    in_flight: AtomicUsize,
    /// A request head has been completed at least once.
    served: AtomicBool,
    /// When the connection last became idle, in ms after `accepted`.
    idle_since_ms: AtomicU64,
    /// Set by a write that timed out.
    write_timed_out: AtomicBool,
    /// Reset the socket when it is closed (`SO_LINGER` 0): whatever is still queued for the
    /// client is dropped.
    reset: AtomicBool,
    abort: Notify,
}

impl Conn {
    /// A connection accepted at `accepted`.
    pub(crate) fn new(accepted: Instant) -> Arc<Self> {
        Arc::new(Self {
            accepted,
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            write_timed_out: AtomicBool::new(false),
            reset: AtomicBool::new(false),
            abort: Notify::new(),
        })
    }

    fn idle_since(&self) -> Instant {
        self.accepted + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
}

/// A request's handle on its connection: [`ConnectionHandle::abort`] closes it.
#[derive(Debug, Clone)]
pub struct ConnectionHandle(Arc<Conn>);

impl ConnectionHandle {
    /// Drops the connection at once, whatever it is doing (its other requests too), and
    /// resets it: what is still queued for the client is dropped.
    pub fn abort(&self) {
        self.0.reset.store(true, Ordering::Relaxed);
        self.0.abort.notify_one();
    }
}

/// Counts a request as in flight while it lives.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn start(conn: &Arc<Conn>) -> Self {
        conn.served.store(true, Ordering::Relaxed);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        let now = conn.accepted.elapsed().as_millis() as u64;
        conn.idle_since_ms.store(now, Ordering::Release);
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The service of one connection: `S`, with each request counted in flight until its
/// response body is dropped, and a [`ConnectionHandle`] in its extensions.
#[derive(Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, conn: Arc<Conn>) -> Self {
        Self { inner, conn }
    }
}

impl<S, B> tower::Service<Request<B>> for Tracked<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let in_flight = InFlight::start(&self.conn);
        request
            .extensions_mut()
            .insert(ConnectionHandle(self.conn.clone()));
        TrackedFuture {
            inner: self.inner.call(request),
            in_flight: Some(in_flight),
        }
    }
}

/// The response future of [`Tracked`].
pub(crate) struct TrackedFuture<F> {
    inner: F,
    in_flight: Option<InFlight>,
}

impl<F> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match Pin::new(&mut self.inner).poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        let in_flight = self.in_flight.take().expect("polled after completion");
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            inner: body,
            _in_flight: in_flight,
        })))
    }
}

/// A response body that keeps its request in flight until it is dropped.
pub(crate) struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl axum::body::HttpBody for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// hyper finished it (the client closed it, an error, a graceful shutdown completed).
    Finished,
    /// It never completed a request head within `HEADER_TIMEOUT_MS` of accept.
    HeaderTimeout,
    /// It stayed idle (no request in flight, no new head) past `HEADER_TIMEOUT_MS` and then
    /// did not close within [`GRACE`] of a graceful shutdown.
    Idle,
    /// Its writes made no progress for `WRITE_TIMEOUT_MS`.
    WriteTimeout,
    /// A request aborted it ([`ConnectionHandle::abort`]).
    Aborted,
}

impl Ended {
    /// The label of `ringstore_http_connections_closed_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Ended::Finished => "finished",
            Ended::HeaderTimeout => "header-timeout",
            Ended::Idle => "idle",
            Ended::WriteTimeout => "write-timeout",
            Ended::Aborted => "aborted",
        }
    }
}

/// Serves `connection` to its end under the deadlines of the module doc; `shutdown` starts
/// its graceful shutdown.
pub(crate) async fn watch<C>(
    connection: C,
    conn: &Conn,
    header_timeout: Duration,
    shutdown: &CancellationToken,
) -> (Ended, Result<(), C::Error>)
where
    C: GracefulConnection,
{
    let mut connection = std::pin::pin!(connection);
    // Once a graceful shutdown has begun: when the connection is dropped if still idle.
    let mut closing: Option<Instant> = None;
    loop {
        let deadline = match closing {
            Some(at) => at,
            None if conn.in_flight.load(Ordering::Acquire) > 0 => Instant::now() + header_timeout,
            None => conn.idle_since() + header_timeout,
        };
        tokio::select! {
            result = connection.as_mut() => {
                let ended = if conn.write_timed_out.load(Ordering::Relaxed) {
                    Ended::WriteTimeout
                } else {
                    Ended::Finished
                };
                return (ended, result);
            }
            () = conn.abort.notified() => return (Ended::Aborted, Ok(())),
            () = tokio::time::sleep_until(deadline) => {
                let idle = conn.in_flight.load(Ordering::Acquire) == 0;
                let now = Instant::now();
                match closing {
                    Some(_) if idle => return (Ended::Idle, Ok(())),
                    // Still busy after a graceful shutdown began: let it finish (the
                    // gateway's shutdown deadline bounds that), check again later.
                    Some(_) => closing = Some(now + GRACE),
                    None if !idle || conn.idle_since() + header_timeout > now => {}
                    None if !conn.served.load(Ordering::Relaxed) => {
                        return (Ended::HeaderTimeout, Ok(()));
                    }
                    None => {
                        connection.as_mut().graceful_shutdown();
                        closing = Some(now + GRACE);
                    }
                }
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + GRACE);
            }
        }
    }
}

/// A TCP connection whose writes fail once they have made no progress for `write_timeout`;
/// the socket is then reset when closed, so that the kernel drops what was not sent.
pub(crate) struct Guarded {
    tcp: TcpStream,
    conn: Arc<Conn>,
    write_timeout: Duration,
    /// Made at the first write that has to wait; armed while writes wait.
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Guarded {
    pub(crate) fn new(tcp: TcpStream, conn: Arc<Conn>, write_timeout: Duration) -> Self {
        Self {
            tcp,
            conn,
            write_timeout,
            stall: None,
            armed: false,
        }
    }

    /// Runs one write operation under the write timeout.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.conn.write_timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Err(timed_out()));
        }
        let polled = write(Pin::new(&mut self.tcp), cx);
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = Instant::now() + self.write_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            stall.as_mut().reset(deadline);
            self.armed = true;
        }
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Reset rather than close: the client reads nothing, so what is still queued for it
        // would only hold kernel memory.
        self.conn.write_timed_out.store(true, Ordering::Relaxed);
        self.conn.reset.store(true, Ordering::Relaxed);
        Poll::Ready(Err(timed_out()))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.conn.reset.load(Ordering::Relaxed) {
            let _ = self.tcp.set_zero_linger();
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client read nothing for WRITE_TIMEOUT_MS",
    )
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |tcp, cx| tcp.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |tcp, cx| tcp.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, |tcp, cx| tcp.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
