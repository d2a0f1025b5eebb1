//! [`AppError`]: every web API error, rendered as
//! `{"error": {"code": "...", "message": "..."}}` with the right status.
//!
//! Use the specific variants for what a client can act on; `Internal` for the rest.
//! Internal details are logged, never sent: a 500 says only that something failed.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parley_db::DbError;
use parley_orchestrator::OrchestratorError;
use serde::Serialize;

/// The body of every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` of an [`ErrorBody`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code: `invalid_json`, `invalid_text`, `invalid_id`,
    /// `invalid_query`, `invalid_cursor`, `invalid_cwd`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `payload_too_large`, `request_timeout`,
    /// `idempotency_key_reused`, `rate_limited`, `too_many_queued`, `too_many_streams`,
    /// `unavailable`, …
    #[schema(example = "not_found")]
    pub code: String,
    /// Readable explanation (never internal details).
    #[schema(example = "conversation not found")]
    pub message: String,
}

/// An error answered by the web API.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request is malformed or invalid; `code` names what (`invalid_json`,
    /// `invalid_text`, `invalid_id`, `invalid_query`…).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// Readable explanation.
        message: String,
    },
    /// 401: no valid API token (missing, unknown or revoked); answered with
    /// `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the operation is for admin tokens only (the caller is authenticated, and
    /// what it asked for is public knowledge, so there is nothing to hide behind a 404).
    #[error("{0}")]
    Forbidden(String),
    /// 404: the thing does not exist (or is not the caller's to see).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409: the conversation's state does not allow the request.
    #[error("{0}")]
    Conflict(String),
    /// 413: the request body is larger than the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 408: the request body stalled longer than the body read timeout.
    #[error("the request body did not arrive in time; send it without pausing")]
    RequestTimeout,
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the request is well-formed but cannot be processed; `code` names why
    /// (`idempotency_key_reused`).
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code.
        code: &'static str,
        /// Readable explanation.
        message: String,
    },
    /// 429: a limit was reached; `code` names which (`rate_limited`, `too_many_queued`,
    /// `too_many_streams`). Answered with `Retry-After: retry_after_secs`.
    #[error("{message}")]
    TooManyRequests {
        /// Machine-readable code.
        code: &'static str,
        /// Readable explanation.
        message: String,
        /// Seconds to wait before trying again (at least 1).
        retry_after_secs: u64,
    },
    /// 503: the database is unreachable; retry later.
    #[error("the database is unavailable; try again shortly")]
    Unavailable,
    /// 500: anything else.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// A 400 with a code and message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::TooManyRequests { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Internal(detail) => tracing::error!(error = %detail, "request failed"),
            Self::Unavailable => tracing::warn!("request failed: database unavailable"),
            _ => {}
        }
        let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message: self.to_string() } };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::TooManyRequests { retry_after_secs, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from((*retry_after_secs).max(1)));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"parley\""));
            }
            _ => {}
        }
        response
    }
}

impl From<DbError> for AppError {
    fn from(err: DbError) -> Self {
        match err {
            DbError::NotFound { what } => Self::NotFound(what),
            DbError::Unavailable(_) => Self::Unavailable,
            DbError::Conflict { constraint } => Self::Conflict(format!("conflict on {constraint}")),
            err @ DbError::ActiveSession => Self::Conflict(err.to_string()),
            DbError::Other(cause) | DbError::Retryable(cause) => Self::Internal(cause.to_string()),
        }
    }
}

impl From<OrchestratorError> for AppError {
    fn from(err: OrchestratorError) -> Self {
        match err {
            OrchestratorError::NotFound(what) => Self::NotFound(what),
            OrchestratorError::InvalidInput(message) => Self::bad_request("invalid_text", message),
            OrchestratorError::InvalidSetting { code, message } => Self::bad_request(code, message),
            OrchestratorError::Conflict(message) => Self::Conflict(message),
            err @ OrchestratorError::IdempotencyKeyReused => {
                Self::Unprocessable { code: "idempotency_key_reused", message: err.to_string() }
            }
            err @ OrchestratorError::TooManyQueued { .. } => {
                Self::TooManyRequests { code: "too_many_queued", message: err.to_string(), retry_after_secs: 5 }
            }
            OrchestratorError::Db(db) => db.into(),
        }
    }
}

/// True when `err` (a body rejection) was caused by the request body read timeout
/// (tower-http's `TimeoutError`, somewhere in its source chain).
pub fn body_timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        next = e.source();
    }
    false
}

impl AppError {
    /// The error for a body that could not be read: 413 over the limit, 408 when it
    /// stalled, else 400 with `code`.
    pub fn from_body_rejection(rejection: &BytesRejection, code: &'static str) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge("the request body is larger than the limit".into())
        } else if body_timed_out(rejection) {
            Self::RequestTimeout
        } else {
            Self::bad_request(code, rejection.body_text())
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        if body_timed_out(&rejection) {
            return Self::RequestTimeout;
        }
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge("the request body is larger than the limit".into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::UnsupportedMediaType("send a JSON body with Content-Type: application/json".into())
            }
            _ => Self::bad_request("invalid_json", rejection.body_text()),
        }
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}
