//! The HTTP accept loop: what `axum::serve` does, plus the header timeout it does not
//! expose.
//!
//! hyper bounds the time to read a request's headers only when given a timer, which
//! `axum::serve` never gives it; without one a client may hold a connection (and a task)
//! open forever by sending a header byte now and then. Here HTTP/1 connections get
//! hyper's `header_read_timeout`, which also closes a keep-alive connection that stays
//! idle as long. That clock only starts once hyper knows the protocol, so a watchdog per
//! connection also closes any connection (HTTP/1 or HTTP/2) whose first request has not
//! arrived within the same time: one that connects and sends nothing, or dribbles the
//! HTTP/2 preface.
//!
//! Shutdown is as before: once the shutdown channel turns true, no connection is
//! accepted, each open one finishes its in-flight requests (curve streams end by
//! themselves on the same signal) and closes, and [`serve`] returns when all have.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` turns true, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = crate::shutdown::stopped(&mut shutdown) => break,
        };
        let arrived = Arc::new(AtomicBool::new(false));
        let service = {
            let arrived = arrived.clone();
            let app = app.clone();
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                arrived.store(true, Ordering::Relaxed);
                app.clone().oneshot(req.map(Body::new))
            })
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                _ = no_first_request(&arrived, header_timeout) => {
                    tracing::debug!("no request within the header timeout; connection closed");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Ready once `timeout` has passed without the connection's first request; never if it
/// arrived.
async fn no_first_request(arrived: &AtomicBool, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if arrived.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// As `axum::serve` (after hyper 0.14): a connection's own failure is its client's
/// business; anything else (out of file descriptors) is logged and waited out.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
