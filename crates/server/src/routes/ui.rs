//! The web UI: the static files of `web/` (HTML, CSS, ES modules), embedded in the
//! binary at compile time and served at `/` and `/assets/…`.
//!
//! The UI is plain files with no build step, so `cargo build` alone produces a working
//! UI. Every UI response carries a Content-Security-Policy that allows only this
//! origin's scripts and styles (no inline script), `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer` and `X-Frame-Options: DENY`. Responses carry an
//! `ETag` (a hash of the file) and `Cache-Control: no-cache`, so a browser revalidates
//! and a new binary's UI is picked up at once.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::AppError;

/// The Content-Security-Policy of UI responses: same-origin scripts, styles, fetches
/// and event streams only; no inline script, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// Its name under `/assets/` (empty for the page itself).
    name: &'static str,
    /// `Content-Type` header value.
    content_type: &'static str,
    /// The file's bytes.
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../../../../web/assets/", $name)),
        }
    };
}

/// The page.
static INDEX: Asset =
    Asset { name: "", content_type: "text/html; charset=utf-8", body: include_bytes!("../../../../web/index.html") };

/// Everything under `web/assets/`.
static ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("markdown.js", "text/javascript; charset=utf-8"),
    asset!("conversation.js", "text/javascript; charset=utf-8"),
    asset!("settings.js", "text/javascript; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The `ETag` of every file, computed once: FNV-1a of the bytes.
static ETAGS: LazyLock<Vec<HeaderValue>> =
    LazyLock::new(|| std::iter::once(&INDEX).chain(ASSETS).map(|a| etag_of(a.body)).collect());

fn etag_of(body: &[u8]) -> HeaderValue {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    HeaderValue::from_str(&format!("\"{hash:016x}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The UI's routes: `GET /` and `GET /assets/{name}` (HEAD too).
pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/assets/{*name}", get(asset))
}

/// `GET /` → the page.
pub async fn index(headers: HeaderMap) -> Response {
    respond(&INDEX, 0, &headers)
}

/// `GET /assets/{name}` → an embedded file.
///
/// # Errors
/// 404 for a name that is not embedded.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, AppError> {
    let (i, found) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name).ok_or(AppError::NotFound("asset"))?;
    Ok(respond(found, i + 1, &headers))
}

/// Adds the security headers every UI response carries.
fn secure(headers: &mut HeaderMap) {
    headers
        .insert(HeaderName::from_static("content-security-policy"), HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn respond(asset: &Asset, etag_index: usize, request: &HeaderMap) -> Response {
    let etag = ETAGS.get(etag_index).cloned().unwrap_or_else(|| etag_of(asset.body));
    let fresh = request.get(IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    secure(headers);
    headers.insert(ETAG, etag);
    if !fresh {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_listed_once_and_has_an_etag() {
        let mut names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        assert_eq!(ETAGS.len(), ASSETS.len() + 1);
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
    }

    #[test]
    fn the_page_loads_only_same_origin_module_scripts() {
        let page = std::str::from_utf8(INDEX.body).unwrap_or_default();
        assert!(page.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
        assert!(!page.contains("<script>"), "no inline scripts: the CSP forbids them");
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
    }
}
