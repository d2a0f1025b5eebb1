//! Parley's HTTP surface: the JSON web API, SSE event streams and health probes.
//!
//! [`app`] builds the router from an [`AppState`]; [`serve`] runs it on a listener until
//! a shutdown token fires. `main` and the tests start the same function, so tests can
//! bind port 0.
//!
//! Every `/api/*` handler takes a [`access::Principal`]: authentication (API tokens),
//! ownership of conversations and the per-principal limits live in [`access`].

#![forbid(unsafe_code)]

pub mod access;
pub mod error;
pub mod extract;
pub mod routes;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::routing::{get, post};
use parley_orchestrator::Orchestrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::AppError;

/// Default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The turn pipeline.
    pub orchestrator: Orchestrator,
    /// Fires when the server shuts down; ends SSE streams.
    pub shutdown: CancellationToken,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// The chat platforms whose webhooks are served (`None`: every webhook answers 404).
    pub platforms: Option<std::sync::Arc<parley_platforms::Platforms>>,
    /// Authentication, per-principal limits and CORS of the web API
    /// ([`access::Access::local`]: no tokens, for tests and loopback).
    pub access: access::Access,
}

/// Builds the router.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/conversations", post(routes::conversations::create).get(routes::conversations::index))
        .route("/conversations/{id}", get(routes::conversations::show).delete(routes::conversations::delete))
        .route("/conversations/{id}/messages", get(routes::messages::index).post(routes::messages::create))
        .route("/conversations/{id}/events", get(routes::events::stream))
        .route("/conversations/{id}/cancel", post(routes::conversations::cancel))
        .route("/conversations/{id}/reset", post(routes::conversations::reset))
        .route("/conversations/{id}/pause", post(routes::conversations::pause))
        .route("/conversations/{id}/resume", post(routes::conversations::resume))
        .route("/sessions", get(routes::sessions::index))
        .route("/sessions/{id}", get(routes::sessions::show).delete(routes::sessions::delete))
        .route("/turns/{id}", get(routes::turns::show));
    let cors = state.access.cors_layer();
    let router = Router::new()
        .nest("/api", api)
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .merge(routes::webhooks::router())
        .merge(routes::ui::router())
        .fallback(|| async { AppError::NotFound("route") })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, AppError::bad_request("method_not_allowed", "method not allowed"))
        })
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let path = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
            tracing::info_span!("request", method = %req.method(), path)
        }))
        .layer(CatchPanicLayer::custom(|_| {
            use axum::response::IntoResponse;
            AppError::Internal("handler panicked".into()).into_response()
        }))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Serves the app on `listener` until `state.shutdown` fires, then stops accepting,
/// ends SSE streams and waits up to `drain` for open requests.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(listener: TcpListener, state: AppState, drain: Duration) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let router = app(state);
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    match tokio::time::timeout(drain, server).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!(?drain, "open requests did not finish in time; closing them");
            Ok(())
        }
    }
}
