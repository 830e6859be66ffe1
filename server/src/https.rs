//! The HTTPS API: what `axum::serve` does for plain HTTP, over TLS. The accept loop only
//! accepts; each connection's TLS handshake runs on the connection's own task, within
//! [`TLS_HANDSHAKE_TIMEOUT_MS`], so a slow or silent client holds up nobody else. hyper then
//! serves HTTP/1.1 on the connection with the API's router.
//!
//! Graceful shutdown is `axum::serve`'s: once `shutdown` resolves, stop accepting, let every
//! connection finish the request it is serving, close idle ones (and those still in their
//! handshake once it ends), and return when all are closed. The caller bounds that wait (the
//! grace period of [`crate::serve::serve_http`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take over its TLS handshake before its connection is closed.
const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Pause after an accept error that is not one connection's (out of file descriptors,
/// usually), rather than spinning on it.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// Serves `router` over TLS on `listener` until `shutdown` resolves and every connection has
/// closed.
pub(crate) async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, address)) => {
                // Taken before the handshake, so that shutdown waits for this connection too.
                let watcher = graceful.watcher();
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(serve_connection(tcp, address, acceptor, router, watcher));
            }
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One connection: the TLS handshake, then HTTP/1.1 until the client or a graceful shutdown
/// closes it.
async fn serve_connection(
    tcp: TcpStream,
    address: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    watcher: Watcher,
) {
    // As on plain HTTP: without TCP_NODELAY the tail of a multi-segment answer can wait on
    // Nagle's algorithm for the client's delayed acknowledgement.
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
    }
    let handshake = timeout(
        Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS),
        acceptor.accept(tcp),
    );
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        // A client that speaks plain HTTP or distrusts the certificate learns it from the
        // failed handshake; at a higher level, any scanner could fill the log.
        Ok(Err(error)) => {
            tracing::debug!(%address, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%address, "TLS handshake timed out");
            return;
        }
    };
    // The timer arms hyper's limit on reading a request's head (30 s by default).
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router));
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%address, %error, "HTTPS connection failed");
    }
}

/// Errors of one connection that went away before it was accepted: nothing to wait out.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
