//! The web API's OpenAPI 3.1 document, served at `GET /api/openapi.json`.
//!
//! The document is generated from the code: each handler carries a `#[utoipa::path]`
//! attribute (method, path, parameters, responses) and the router is built from those
//! same attributes ([`crate::documented_routes`] uses `utoipa_axum::routes!`), so a route cannot be
//! served without being documented. Response bodies are the handlers' own types
//! (`ToSchema` derives, in `parley-db` and `parley-orchestrator` behind their `openapi`
//! feature). Errors share one body, [`ErrorBody`], referenced through the response
//! components below ([`BadRequest`], [`Unauthorized`], …).
//!
//! Security: every `/api/*` operation needs `Authorization: Bearer <token>` (scheme
//! `bearer`); the events stream also accepts `?access_token=` (scheme `access_token`);
//! `/healthz`, `/readyz` and this document need nothing. The webhooks and the UI's files
//! are not part of the document (they are not the web API).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToResponse};

use crate::error::ErrorBody;

/// The document's fixed parts: information, shared components and the default security
/// requirement. Paths are added by the router ([`crate::app`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Parley web API",
        description = "Chat-bot conversations backed by assistant sessions that are rebuilt when they go stale. \
                       Errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(
        schemas(ErrorBody, parley_db::conversation::Snapshot),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            RequestTimeout,
            UnsupportedMediaType,
            UnprocessableEntity,
            TooManyRequests,
            Unavailable
        )
    ),
    security(("bearer" = [])),
    modifiers(&SecuritySchemes),
    tags(
        (name = "conversations", description = "Conversations and their state actions"),
        (name = "messages", description = "Messages and the event stream of a conversation"),
        (name = "sessions", description = "Assistant sessions"),
        (name = "turns", description = "Turns"),
        (name = "health", description = "Probes and this document (no token needed)")
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` and `access_token` security schemes.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token from `parley tokens create --principal NAME`."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The API token as a query parameter: accepted only by the events stream, for a browser \
                 `EventSource`, which cannot send headers.",
            ))),
        );
    }
}

/// Paths that need no token: their operations get `security: []`.
const PUBLIC_PATHS: [&str; 3] = ["/healthz", "/readyz", "/api/openapi.json"];

/// The complete document, as JSON: [`ApiDoc`] plus every documented route of
/// [`crate::app`], with the public operations' `security: []` and the [`LINKS`].
#[must_use]
pub fn document() -> serde_json::Value {
    let (_, mut doc) = crate::documented_routes().split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    for path in PUBLIC_PATHS {
        if let Some(item) = doc.paths.paths.get_mut(path) {
            for op in operations(item) {
                op.security = Some(Vec::new());
            }
        }
    }
    let mut json = serde_json::to_value(&doc).unwrap_or_default();
    add_links(&mut json);
    json
}

/// Links from the ids an answer carries to the operations that take them as `{id}` (what
/// a client, or a stateful fuzzer, can do next): (method, path, status, link name,
/// target operation id, field of the answer).
const LINKS: [(&str, &str, &str, &str, &str, &str); 6] = [
    ("post", "/api/conversations", "201", "GetConversation", "conversations_show", "conversation_id"),
    ("post", "/api/conversations", "201", "PostMessage", "messages_create", "conversation_id"),
    ("post", "/api/conversations", "201", "GetMessages", "messages_index", "conversation_id"),
    ("post", "/api/conversations/{id}/messages", "202", "GetTurn", "turns_show", "turn_id"),
    ("get", "/api/turns/{id}", "200", "GetSession", "sessions_show", "session_id"),
    ("get", "/api/turns/{id}", "200", "GetConversationOfTurn", "conversations_show", "conversation_id"),
];

/// Adds the [`LINKS`] to the JSON document. (Added as JSON because utoipa 5's `Link`
/// serialises `operation_id` instead of OpenAPI's `operationId`.)
fn add_links(doc: &mut serde_json::Value) {
    for (method, path, status, name, operation_id, field) in LINKS {
        if let Some(response) = doc["paths"][path][method]["responses"][status].as_object_mut() {
            let links = response.entry("links").or_insert_with(|| serde_json::json!({}));
            links[name] = serde_json::json!({ "operationId": operation_id, "parameters": { "id": format!("$response.body#/{field}") } });
        }
    }
}

/// The operations of a path item.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The document as JSON, rendered once.
static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(|| document().to_string());

/// `GET /api/openapi.json`: this document (no token needed).
#[utoipa::path(
    get,
    operation_id = "openapi_document",
    path = "/api/openapi.json",
    tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object))
)]
pub async fn show() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT_JSON.as_str())
}

/// An error response component: its description and the headers it carries, with the
/// shared [`ErrorBody`].
fn error_response(description: &str, headers: &[(&str, &str)]) -> RefOr<Response> {
    let mut builder = ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build());
    for (name, about) in headers {
        let schema = if *name == "Retry-After" {
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::Integer)
                .description(Some("seconds"))
        } else {
            utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String)
        };
        builder = builder.header(*name, HeaderBuilder::new().schema(schema).description(Some(*about)).build());
    }
    builder.build().into()
}

/// Declares an error response component: a unit struct implementing [`ToResponse`].
macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident => $description:literal $(, $header:literal: $about:literal)*;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response($description, &[$(($header, $about)),*]))
            }
        }
    )*};
}

error_responses! {
    /// 400: malformed or invalid input (`invalid_json`, `invalid_text`, `invalid_id`,
    /// `invalid_query`, `invalid_cursor`, `invalid_path`, `invalid_header`,
    /// `invalid_assistant`, `invalid_cwd`, …).
    BadRequest => "Malformed or invalid input; `error.code` says which (invalid_json, invalid_text, invalid_id, invalid_query, invalid_cursor, invalid_cwd, …)";
    /// 401: no valid API token.
    Unauthorized => "No valid API token (missing, malformed, unknown or revoked)",
        "WWW-Authenticate": "`Bearer realm=\"parley\"`";
    /// 403: an admin-only operation called with a non-admin token.
    Forbidden => "The operation is for admin tokens only";
    /// 404: no such thing, or not the caller's to see.
    NotFound => "It does not exist, or belongs to another principal (the two answer alike)";
    /// 409: the state does not allow the request.
    Conflict => "The conversation's or session's state does not allow this; `error.message` explains";
    /// 413: the body is over the limit.
    PayloadTooLarge => "The request body is larger than the limit (`--body-limit`, 1 MiB by default)";
    /// 408: the request's headers or body did not arrive in time.
    RequestTimeout => "The request's headers or body did not arrive in time (`--header-read-timeout-secs`, \
                       `--body-read-timeout-secs`); `error.code` is `request_timeout`";
    /// 422: well-formed but refused; `error.code` says why.
    UnprocessableEntity => "The `Idempotency-Key` was already used for a different text \
                            (`idempotency_key_reused`); nothing was stored";
    /// 415: the body is not declared as JSON.
    UnsupportedMediaType => "The body must be JSON, sent with `Content-Type: application/json`";
    /// 429: a limit was reached.
    TooManyRequests => "A limit was reached: `rate_limited`, `too_many_queued` or `too_many_streams`",
        "Retry-After": "Seconds to wait before trying again";
    /// 503: the database is unreachable.
    Unavailable => "The database is unavailable; try again shortly",
        "Retry-After": "Seconds to wait before trying again";
}
