//! `--http-bootstrap-addr`: the `/id` endpoint other nodes bootstrap from.

use axum::Router;
use axum::routing::get;
use libp2p::Multiaddr;

/// `--http-bootstrap-addr`: serves this node's addresses at `/id`, as
/// `addrs` returns them when asked.
pub fn id_router<F, Fut>(addrs: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Multiaddr>> + Send,
{
    Router::new().route(
        "/id",
        get(move || {
            let addrs = addrs.clone();
            async move {
                addrs()
                    .await
                    .iter()
                    .map(|a| format!("{a}\n"))
                    .collect::<String>()
            }
        }),
    )
}
