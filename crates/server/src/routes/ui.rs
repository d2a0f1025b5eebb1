//! The web UI: the static files of `web/` (HTML, CSS, ES modules), embedded in the
//! binary at compile time by `rust-embed` (debug builds too) and served at `/` and
//! `/assets/…`.
//!
//! The UI is plain files with no build step, so `cargo build` alone produces a working
//! UI; every file under `web/assets/` is served, with the content type of its extension.
//! Every UI response carries a Content-Security-Policy that allows only this origin's
//! scripts and styles (no inline script), `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer` and `X-Frame-Options: DENY`. Responses carry an
//! `ETag` (the file's SHA-256, computed at compile time) and `Cache-Control: no-cache`,
//! so a browser revalidates (`If-None-Match` → `304`) and a new binary's UI is picked up
//! at once.

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::{EmbeddedFile, RustEmbed};

use crate::AppState;
use crate::error::AppError;

/// The Content-Security-Policy of UI responses: same-origin scripts, styles, fetches
/// and event streams only; no inline script, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The embedded files: `index.html` and everything under `assets/` (not the UI's tests).
#[derive(RustEmbed)]
#[folder = "../../web/"]
#[include = "index.html"]
#[include = "assets/**"]
struct Ui;

/// The page's path in [`Ui`].
const INDEX: &str = "index.html";

/// The `Content-Type` of an embedded file: its extension's type, with `charset=utf-8`
/// for text (HTML, CSS, JavaScript, JSON).
fn content_type(file: &EmbeddedFile) -> String {
    let mime = file.metadata.mimetype();
    let text = mime.starts_with("text/") || mime.ends_with("javascript") || mime.ends_with("json");
    if text { format!("{mime}; charset=utf-8") } else { mime.to_owned() }
}

/// The strong `ETag` of an embedded file: its SHA-256 (first 128 bits, hex), quoted.
fn etag(file: &EmbeddedFile) -> String {
    let hash = file.metadata.sha256_hash();
    format!("\"{}\"", hash[..16].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Whether an `If-None-Match` header names `etag` (`*`, a list, weak tags compared
/// weakly, as RFC 9110 §13.1.2 says). Written here because tower-http's `ServeDir`,
/// which does this, serves files from disk, not from the binary.
fn matches(if_none_match: &HeaderValue, etag: &str) -> bool {
    let Ok(tags) = if_none_match.to_str() else { return false };
    tags.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// The UI's routes: `GET /` and `GET /assets/{name}` (HEAD too).
pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/assets/{*name}", get(asset))
}

/// `GET /` → the page.
///
/// # Errors
/// None in practice: the page is embedded (404 otherwise).
pub async fn index(headers: HeaderMap) -> Result<Response, AppError> {
    respond(INDEX, &headers)
}

/// `GET /assets/{name}` → an embedded file.
///
/// # Errors
/// 404 for a name that is not embedded.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, AppError> {
    respond(&format!("assets/{name}"), &headers)
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

/// The embedded file at `path`, or `304 Not Modified` when the request's
/// `If-None-Match` names its `ETag`.
fn respond(path: &str, request: &HeaderMap) -> Result<Response, AppError> {
    let file = Ui::get(path).ok_or(AppError::NotFound("asset"))?;
    let etag = etag(&file);
    let fresh = request.get(IF_NONE_MATCH).is_some_and(|v| matches(v, &etag));
    let content_type = content_type(&file);
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { file.data.into_response() };
    let headers = response.headers_mut();
    secure(headers);
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, etag);
    }
    if !fresh && let Ok(content_type) = HeaderValue::from_str(&content_type) {
        headers.insert(CONTENT_TYPE, content_type);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> EmbeddedFile {
        Ui::get(path).unwrap_or_else(|| panic!("{path} is not embedded"))
    }

    #[test]
    fn every_file_of_web_assets_is_embedded_with_its_type_and_an_etag() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .map(|name| format!("assets/{name}"))
            .collect();
        on_disk.push(INDEX.to_owned());
        on_disk.sort();
        let mut embedded: Vec<String> = Ui::iter().map(|p| p.into_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "exactly index.html and web/assets, not the UI's tests");
        let mut etags: Vec<String> = embedded.iter().map(|p| etag(&file(p))).collect();
        etags.sort();
        etags.dedup();
        assert_eq!(etags.len(), embedded.len(), "one ETag per file");
        assert!(embedded.iter().all(|p| !file(p).data.is_empty()));
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type(&file(INDEX)), "text/html; charset=utf-8");
        assert_eq!(content_type(&file("assets/app.js")), "text/javascript; charset=utf-8");
        assert_eq!(content_type(&file("assets/app.css")), "text/css; charset=utf-8");
        assert_eq!(content_type(&file("assets/icon.svg")), "image/svg+xml");
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_the_wildcard() {
        let tag = etag(&file("assets/app.js"));
        for header in [tag.clone(), format!("W/{tag}"), format!("\"other\", {tag}"), "*".to_owned()] {
            assert!(matches(&HeaderValue::from_str(&header).unwrap_or_else(|e| panic!("{e}")), &tag), "{header}");
        }
        assert!(!matches(&HeaderValue::from_static("\"other\""), &tag));
    }

    #[test]
    fn the_page_loads_only_same_origin_module_scripts() {
        let page = file(INDEX);
        let page = std::str::from_utf8(&page.data).unwrap_or_default();
        assert!(page.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
        assert!(!page.contains("<script>"), "no inline scripts: the CSP forbids them");
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
    }

    /// The web UI subscribes to the events stream by kind, from its own list: a kind the
    /// server sends but the list lacks would never reach the page.
    #[test]
    fn the_web_ui_listens_to_every_event_kind() {
        use parley_db::event::EventKind;
        use strum::IntoEnumIterator;

        let script = include_str!("../../../../web/assets/conversation.js");
        let list = script
            .split_once("const EVENT_KINDS = [")
            .and_then(|(_, rest)| rest.split_once("];"))
            .map(|(list, _)| list)
            .expect("`const EVENT_KINDS = [ … ];` in conversation.js");
        let listed: Vec<&str> =
            list.split(',').map(|k| k.trim().trim_matches('\'')).filter(|k| !k.is_empty()).collect();
        let kinds: Vec<&str> = EventKind::iter().map(<&str>::from).collect();
        assert_eq!(listed, kinds, "web/assets/conversation.js EVENT_KINDS against EventKind");
    }
}
