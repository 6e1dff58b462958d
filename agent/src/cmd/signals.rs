//! SIGTERM and SIGINT, as a cancellation every long-running command shares.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` at the first SIGTERM (kubelet stopping the pod) or
/// SIGINT (Ctrl-C).
pub async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    shutdown.cancel();
}
