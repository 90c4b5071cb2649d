//! The control plane's HTTP server: the API and the web pages on one listener. The pages read
//! through the API's own functions (`web` depends on `api`, never the other way); this is where
//! the two are put together.

use crate::api::{self, ApiState};
use std::net::SocketAddr;

/// The API and the pages as one router (no socket: tests call it with `oneshot`).
pub fn router(state: ApiState) -> axum::Router {
    api::router_with(state, crate::web::routes())
}

/// Serves the API and the pages on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // event streams never end by themselves: they end when the server stops, so that its
    // graceful shutdown does not wait on an open page forever
    let (closing, closed) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = closing.send(true);
    };
    axum::serve(
        listener,
        router(state)
            .layer(axum::Extension(api::events::Closing(closed)))
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
