//! The HTTP server loop: hyper (HTTP/1 and HTTP/2, sniffed by hyper-util), HTTPS (rustls)
//! when given a certificate, and what an HTTP client can make the gateway hold:
//!
//! - **Connections:** at most `MAX_CONNECTIONS` (TLS handshakes included); one more is closed
//!   as soon as it is accepted (counted in `ringstore_http_connections_refused_total`).
//! - **Time:** one deadline, `HEADER_TIMEOUT_MS` from accept (or from a connection's last
//!   response), to a complete request head, for every protocol; a write timeout,
//!   `WRITE_TIMEOUT_MS`, for a client that does not read (see [`crate::connection`]).
//! - **Memory:** an HTTP/1 head is at most [`MAX_HEAD`] (hyper's `max_buf_size`: 431 beyond),
//!   an HTTP/2 header list too (`max_header_list_size`, the CONTINUATION frames of one
//!   included), with [`H2_MAX_STREAMS`] streams per connection and small flow-control windows.
//! - **Shutdown:** stops accepting, shuts every connection down gracefully and waits for them
//!   until the shutdown deadline; what is left then is dropped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::connection::{self, Conn, Ended, Guarded, Tracked};
use crate::metrics::Metrics;

/// The largest HTTP/1 request head (request line and headers), and the largest HTTP/2 header
/// list; a bigger one is refused (HTTP/1: 431 and the connection closed). It is also the
/// bound of hyper's HTTP/1 read and write buffers (`max_buf_size`): bodies are read and
/// written in pieces of at most this much. 16 KiB, as HTTP/2's default in hyper; nginx allows
/// 8 KiB lines and 32 KiB in all.
pub const MAX_HEAD: usize = 16 * 1024;
/// HTTP/2 streams a client may open at once on one connection.
pub const H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 flow-control windows: how much request body a client may send ahead of what the
/// gateway has read, per stream (one body is at most 64 KiB) and per connection.
pub const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// See [`H2_STREAM_WINDOW`].
pub const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Response data HTTP/2 buffers per stream before the body waits.
pub const H2_SEND_BUFFER: usize = 64 * 1024;
/// An HTTP/2 connection with nothing received for this long is sent a PING...
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ... and closed if the PING is not acknowledged within this.
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What clients may make the server hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `HEADER_TIMEOUT_MS`.
    pub header_timeout: Duration,
    /// `WRITE_TIMEOUT_MS`.
    pub write_timeout: Duration,
    /// `MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `SHUTDOWN_TIMEOUT_MS`.
    pub shutdown_timeout: Duration,
}

/// An HTTPS acceptor for the PEM certificate chain `cert` and private key `key`.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("TLS_CERT {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("TLS_KEY {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The connection builder: hyper's own limits (see the module doc).
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Heads after the first on a keep-alive connection; the first is the watchdog's.
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
        .max_header_list_size(MAX_HEAD as u32)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER)
        // h2's defaults, stated: streams a client may reset before the gateway accepts them,
        // and streams the gateway may reset for a client's errors, before it is cut off.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    builder
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown`, then stops accepting and
/// drains until `limits.shutdown_timeout` after `shutdown`: that moment is returned, for what
/// else must finish by then.
pub async fn serve(
    listener: TcpListener,
    app: crate::App,
    metrics: Arc<Metrics>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> Instant {
    let builder = Arc::new(builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let accepted = Instant::now();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: holding it (or reading a request to answer 503) would spend
            // what the cap is there to save.
            metrics.connection_refused();
            debug!(%peer, "MAX_CONNECTIONS reached: connection refused");
            drop(stream);
            continue;
        };
        let open = metrics.connection_opened();
        let (app, builder, tls, metrics, shutdown) = (
            app.clone(),
            builder.clone(),
            tls.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            let ended = serve_one(stream, accepted, app, &builder, tls, limits, &shutdown).await;
            if ended != Ended::Finished {
                debug!(%peer, reason = ended.as_str(), "connection closed");
                metrics.connection_closed(ended.as_str());
            }
            drop((open, slot));
        });
    }
    let deadline = Instant::now() + limits.shutdown_timeout;
    drop(listener);
    connections.close();
    if tokio::time::timeout_at(deadline, connections.wait())
        .await
        .is_err()
    {
        warn!(
            connections = connections.len(),
            "requests still in flight after SHUTDOWN_TIMEOUT_MS ({:?}); stopping anyway",
            limits.shutdown_timeout
        );
    }
    deadline
}

/// Serves one connection accepted at `accepted`: the TLS handshake (if any) and the requests
/// under the deadline of [`connection::watch`].
async fn serve_one(
    stream: TcpStream,
    accepted: Instant,
    app: crate::App,
    builder: &auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: &CancellationToken,
) -> Ended {
    let conn = Conn::new(accepted);
    let io = Guarded::new(stream, conn.clone(), limits.write_timeout);
    let service = TowerToHyperService::new(Tracked::new(app, conn.clone()));
    let (ended, result) = match tls {
        None => {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            connection::watch(connection, &conn, limits.header_timeout, shutdown).await
        }
        Some(acceptor) => {
            // The handshake is part of the way to the first request head: the same deadline.
            let deadline = accepted + limits.header_timeout;
            let stream = match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    return Ended::Finished;
                }
                Err(_) => return Ended::HeaderTimeout,
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            connection::watch(connection, &conn, limits.header_timeout, shutdown).await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended");
    }
    ended
}
