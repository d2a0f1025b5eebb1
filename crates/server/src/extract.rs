//! Extractors whose rejections are [`AppError`]s, so malformed input gets the API's JSON
//! error body instead of axum's plain text.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use uuid::Uuid;

use crate::error::AppError;

/// `axum::Json` with JSON errors.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct Json<T>(pub T);

/// `axum::extract::Query` with JSON errors.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path` with JSON errors.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct Path<T>(pub T);

/// Parses an id from the path.
///
/// # Errors
/// 400 `invalid_id` when it is not a UUID.
pub fn parse_id(raw: &str, what: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(raw)
        .map_err(|_| AppError::bad_request("invalid_id", format!("{raw:?} is not a valid {what} id (a UUID)")))
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}
