//! The shutdown signal: one `watch` channel that turns true on SIGINT/SIGTERM
//! ([`crate::server::shutdown_on_signals`]). The accept loop, the curve streams and the
//! workers each wait on it; it lives here, beneath all of them, so that none has to
//! import another to learn that the process is stopping.

use tokio::sync::watch;

/// Resolves once the shutdown flag is true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
