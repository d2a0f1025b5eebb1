//! Parley's HTTP surface: the JSON web API, SSE event streams and health probes.
//!
//! [`launch()`] starts a whole replica (database, orchestrator, workers and this HTTP
//! server) from parsed [`launch::Settings`] on a bound listener: `parley serve` and every
//! test harness start Parley through it, so tests can bind port 0 and still run the
//! production wiring. Under it, [`app`] builds the router from an [`AppState`] and
//! [`serve`] runs it on a listener until a shutdown token fires.
//!
//! Handlers read through `parley_db` and write only through the
//! [`parley_orchestrator::Orchestrator`] (messages, commands, settings, creating and
//! deleting conversations and sessions, marking a token used), so every write happens
//! where turns are run and cancelled.
//!
//! Every `/api/*` handler takes a [`access::Principal`]: authentication (API tokens),
//! ownership of conversations and the per-principal limits live in [`access`].
//!
//! The web API's routes are registered from their handlers' `#[utoipa::path]`
//! attributes ([`documented_routes`]), which also make the OpenAPI document served at
//! `GET /api/openapi.json` ([`openapi`]).
//!
//! Slow clients are cut off ([`Timeouts`]): a connection whose request headers do not
//! arrive within the header read timeout is closed (hyper's HTTP/1 header timer; there is
//! no request to answer yet), and a request body that stalls for the body read timeout
//! answers `408 request_timeout` (tower-http's request body timeout). Neither applies to
//! responses, so SSE streams stay open.

#![forbid(unsafe_code)]

pub mod access;
pub mod cursor;
pub mod error;
pub mod extract;
pub mod launch;
pub mod metrics;
pub mod openapi;
pub mod routes;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use parley_orchestrator::Orchestrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AppError;
pub use crate::launch::launch;

/// Default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// How long the server waits for a slow client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the start of a request until its headers are complete; a connection that
    /// takes longer is closed (HTTP/1). Also how long an idle keep-alive connection
    /// waits for its next request, and how long a new connection may stay silent
    /// before its first byte (then it is closed, whatever its protocol).
    pub header_read: Duration,
    /// Longest pause while a request body arrives; a body that stalls longer answers
    /// `408 request_timeout`. Responses (SSE streams) are not limited.
    pub body_read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { header_read: Duration::from_secs(30), body_read: Duration::from_secs(30) }
    }
}

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
    /// Header and body read timeouts.
    pub timeouts: Timeouts,
}

impl AppState {
    /// A pooled connection for a handler's reads (writes go through the orchestrator;
    /// see `docs/architecture.md#starting-a-replica`).
    ///
    /// # Errors
    /// [`parley_db::DbError::Unavailable`] when the pool times out or PostgreSQL is
    /// unreachable (answered 503).
    pub async fn db(&self) -> Result<parley_db::PooledClient, parley_db::DbError> {
        self.orchestrator.pool().get().await.map_err(parley_db::DbError::from)
    }
}

/// The documented routes: the web API under `/api`, the probes and the OpenAPI document.
/// Each `routes!` group is one path; its handlers' `#[utoipa::path]` attributes give the
/// methods, so the router and [`openapi::document`] cannot disagree.
pub fn documented_routes() -> OpenApiRouter<AppState> {
    use routes::{conversations, events, export, health, messages, sessions, settings, turns};
    let api = OpenApiRouter::new()
        // /api/conversations, /api/conversations/{id}
        .routes(routes!(conversations::create, conversations::index))
        .routes(routes!(conversations::show, conversations::delete, settings::update))
        // /api/conversations/{id}/export, /api/assistants
        .routes(routes!(export::show))
        .routes(routes!(settings::assistants))
        // /api/conversations/{id}/messages, …/events
        .routes(routes!(messages::index, messages::create))
        .routes(routes!(events::stream))
        // /api/conversations/{id}/{cancel,reset,pause,resume}
        .routes(routes!(conversations::cancel))
        .routes(routes!(conversations::reset))
        .routes(routes!(conversations::pause))
        .routes(routes!(conversations::resume))
        // /api/sessions, /api/sessions/{id}, /api/sessions/{id}/turns
        .routes(routes!(sessions::index))
        .routes(routes!(sessions::show, sessions::delete))
        .routes(routes!(sessions::turns))
        // /api/turns, /api/turns/{id}
        .routes(routes!(turns::index))
        .routes(routes!(turns::show));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api", api)
        .routes(routes!(openapi::show))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}

/// The matched path of the events stream (`GET`, server-sent events).
const EVENTS_PATH: &str = "/api/conversations/{id}/events";

/// A request's span, named by its matched route (low cardinality).
///
/// An events stream's span lives as long as the stream, and the tracing registry keeps
/// the slots of its busiest moment for good, so it is a `debug` span: at the default
/// level (`info`) it is never created and 10,000 idle streams leave nothing behind once
/// they close (docs/architecture.md#idle-event-streams). Every other route's is `info`.
fn request_span(method: &axum::http::Method, path: &str) -> tracing::Span {
    if path == EVENTS_PATH {
        tracing::debug_span!("request", %method, path)
    } else {
        tracing::info_span!("request", %method, path)
    }
}

/// Builds the router.
pub fn app(state: AppState) -> Router {
    let (documented, _) = documented_routes().split_for_parts();
    let cors = state.access.cors_layer();
    let router = documented
        .merge(routes::webhooks::router())
        .merge(routes::ui::router())
        .fallback(|| async { AppError::NotFound("route") })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, AppError::bad_request("method_not_allowed", "method not allowed"))
        })
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(RequestBodyTimeoutLayer::new(state.timeouts.body_read))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let path = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
            request_span(req.method(), path)
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
/// Connections are served by hyper (HTTP/1 and HTTP/2) with the header read timeout of
/// `state.timeouts` on a Tokio timer, which `axum::serve` does not set. Each connection's
/// protocol is told from its first bytes, peeked without reading them (see [`Version`]),
/// so hyper reads the request into one buffer of its initial size: every open SSE stream
/// keeps that buffer (see `docs/architecture.md#idle-event-streams`).
///
/// # Errors
/// None in practice: accept errors (too many open files, a reset connection) are
/// logged and accepting goes on.
pub async fn serve(listener: TcpListener, state: AppState, drain: Duration) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let header_read = state.timeouts.header_read;
    let router = app(state);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Per-connection errors and descriptor exhaustion: wait a little, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(
            router.clone().map_request(|req: axum::http::Request<hyper::body::Incoming>| req.map(Body::new)),
        );
        let watcher = graceful.watcher();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let version = tokio::select! {
                () = shutdown.cancelled() => return,
                version = tokio::time::timeout(header_read, Version::peek(&stream)) => match version {
                    Ok(Ok(version)) => version,
                    // Nothing sent within the header read timeout, or the peer is gone.
                    Ok(Err(_)) | Err(_) => return,
                },
            };
            // Each connection boxed: the task then holds only what its own protocol needs,
            // not the largest of the two.
            let io = TokioIo::new(stream);
            let ended = match version {
                Version::Http1 => {
                    let mut http1 = hyper::server::conn::http1::Builder::new();
                    http1.timer(TokioTimer::new()).header_read_timeout(header_read);
                    let connection = http1.serve_connection(io, service);
                    Box::pin(watcher.watch(connection)).await.map_err(Into::into)
                }
                Version::Http2 | Version::Unknown => {
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read);
                    let builder = if version == Version::Http2 { builder.http2_only() } else { builder };
                    let connection = builder.serve_connection(io, service).into_owned();
                    Box::pin(watcher.watch(connection)).await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(?drain, "open requests did not finish in time; closing them");
    }
    Ok(())
}

/// The HTTP version a connection speaks, told from its first bytes before hyper reads it.
///
/// hyper-util's automatic detection reads the first bytes itself and hands them back to
/// hyper's HTTP/1 parser, whose read buffer then grows from its initial 8 KiB to 16 KiB
/// (hyper 1.x, hyper-util 0.1): a buffer every open SSE stream keeps for its whole life.
/// Peeking leaves the bytes in the socket, so a plain HTTP/1 or HTTP/2 connection is
/// served without that detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// Anything that does not start with the HTTP/2 connection preface.
    Http1,
    /// The HTTP/2 connection preface (RFC 9113 section 3.4): HTTP/2 with prior knowledge.
    Http2,
    /// Only part of the preface has arrived: hyper-util's detection decides.
    Unknown,
}

impl Version {
    /// The client connection preface of HTTP/2 (RFC 9113 section 3.4).
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// Waits for the connection's first bytes and tells its version from them.
    ///
    /// # Errors
    /// The socket's error.
    async fn peek(stream: &tokio::net::TcpStream) -> std::io::Result<Self> {
        let mut buf = [0u8; Self::PREFACE.len()];
        let n = stream.peek(&mut buf).await?;
        Ok(Self::of(&buf[..n]))
    }

    /// The version of a connection whose first bytes are `first`.
    fn of(first: &[u8]) -> Self {
        if !Self::PREFACE.starts_with(first) || first.is_empty() {
            Self::Http1
        } else if first.len() == Self::PREFACE.len() {
            Self::Http2
        } else {
            Self::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{EVENTS_PATH, Version, documented_routes, request_span};

    #[test]
    fn version_is_told_from_the_first_bytes() {
        assert_eq!(Version::of(b"GET /api/conversations HTTP/1.1\r\n"), Version::Http1);
        assert_eq!(Version::of(b"POST /api/conv"), Version::Http1);
        assert_eq!(Version::of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Version::Http2);
        assert_eq!(Version::of(b"PRI * HTTP/2"), Version::Unknown);
        assert_eq!(Version::of(b"P"), Version::Unknown);
        assert_eq!(Version::of(b""), Version::Http1);
    }

    #[test]
    fn an_events_streams_span_is_not_made_at_the_default_level_and_other_requests_are() {
        let (_, openapi) = documented_routes().split_for_parts();
        assert!(openapi.paths.paths.contains_key(EVENTS_PATH), "the events route is {EVENTS_PATH}");
        let info = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(std::io::sink).finish();
        tracing::subscriber::with_default(info, || {
            let get = axum::http::Method::GET;
            assert!(request_span(&get, EVENTS_PATH).is_disabled(), "no span per events stream at info");
            assert!(!request_span(&get, "/api/conversations/{id}/messages").is_disabled());
        });
        let debug = tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_writer(std::io::sink).finish();
        tracing::subscriber::with_default(debug, || {
            assert!(!request_span(&axum::http::Method::GET, EVENTS_PATH).is_disabled(), "kept at debug");
        });
    }
}
